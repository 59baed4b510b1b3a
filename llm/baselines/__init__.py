"""Classical language models and the teaching references of the curriculum's first lessons.

Count-based n-gram models with their smoothing methods and a hidden Markov model
(`ngram.py`, `hmm.py`), and backpropagation written out by hand in NumPy (`backprop.py`).
The neural baselines (Bengio's n-gram MLP, RNN / LSTM / GRU) are `model.arch` choices in
`llm/model/`, trained by the same train.py as the Transformer; word embeddings live in
`llm/embeddings/`. docs/baselines.md compares them all.
"""

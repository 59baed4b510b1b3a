"""Word embeddings and lexical similarity: skip-gram and CBOW with negative sampling, GloVe,
TF-IDF, and the similarity measures built on them (cosine, word mover's distance). Trained on
the project's own corpora (the KJV and Shakespeare); docs/baselines.md has the measurements.
"""

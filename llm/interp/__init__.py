"""Interpretability instruments: what a trained model attends to, reads and relies on.

    heads.py        previous-token and induction-head scores from attention probabilities
    heatmaps.py     per-head attention heatmaps and layer x head score maps to PNG
    logit_lens.py   next-token predictions read from every layer's residual stream
    attribution.py  integrated gradients through the input embeddings
    probes.py       linear probes on hidden states
    projection.py   PCA, t-SNE and mean pooling of token and sentence embeddings

They read the model through its pure-functional API: `llm.model.forward` with
`return_attention=True` / `return_hidden_states=True`, and `llm.model.readout`. See
docs/interpretability.md.
"""

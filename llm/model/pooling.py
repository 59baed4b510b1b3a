"""Sentence embeddings from an encoder's token states: pooling and L2 normalisation.

* Mean pooling over the real (unpadded) tokens, as Sentence-BERT (Reimers & Gurevych, 2019,
  arXiv:1908.10084) found best and all-MiniLM-L6-v2 uses; the padding mask weights the
  mean, so a padded row pools exactly what the same sentence alone pools.
* CLS pooling: the state of the first token (BERT's [CLS], Devlin et al., 2019,
  arXiv:1810.04805), which BERT's pre-training trains for next-sentence prediction.
* L2 normalisation, so cosine similarity is a dot product.

The token states are `ModelOutput.hidden_BLD`: the last block's output for a post-norm
encoder (BERT's `last_hidden_state`), after the final norm for a pre-norm model.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model.functional import forward
from llm.tokenizers.base import Tokenizer
from llm.typing import Array, PyTree

Pooling = Literal["mean", "cls"]
POOLINGS = ("mean", "cls")


def mean_pool(hidden_BLD: Array, mask_BL: Array) -> Array:
    """pooled_BD: the mean of the states where mask_BL is nonzero (float32); an all-padding
    row pools to zeros (the count is clamped at 1e-9, as sentence-transformers does)."""
    w_BL = (mask_BL != 0).astype(jnp.float32)
    total_BD = jnp.einsum("BLD,BL->BD", hidden_BLD.astype(jnp.float32), w_BL)
    return total_BD / jnp.maximum(w_BL.sum(-1, keepdims=True), 1e-9)


def cls_pool(hidden_BLD: Array) -> Array:
    """pooled_BD: the first token's state (float32)."""
    return hidden_BLD[:, 0].astype(jnp.float32)


def l2_normalize(x_BD: Array, eps: float = 1e-12) -> Array:
    """x / max(||x||, eps) row by row (torch.nn.functional.normalize's formula)."""
    norm_B1 = jnp.linalg.norm(x_BD, axis=-1, keepdims=True)
    return x_BD / jnp.maximum(norm_B1, eps)


def pool(hidden_BLD: Array, mask_BL: Array, pooling: Pooling) -> Array:
    """The named pooling of token states."""
    if pooling == "mean":
        return mean_pool(hidden_BLD, mask_BL)
    if pooling == "cls":
        return cls_pool(hidden_BLD)
    raise ValueError(f"pooling {pooling!r} is unknown; choose one of {POOLINGS}")


def sentence_embeddings(
    cfg: ModelConfig,
    params: PyTree,
    tokens_BL: Array,
    mask_BL: Array,
    *,
    pooling: Pooling = "mean",
    normalize: bool = True,
) -> Array:
    """embeddings_BD of a right-padded batch (mask_BL: 1 = real token, 0 = padding).

    Padding enters the model as segment id 0, so no real token attends to it. Jit-able
    with `cfg`, `pooling` and `normalize` static.
    """
    if cfg.arch != "transformer":
        raise ValueError(f"sentence_embeddings pools a Transformer's states; arch={cfg.arch!r}")
    segment_ids_BL = (mask_BL != 0).astype(jnp.int32)
    out = forward(cfg, params, tokens_BL, segment_ids_BL=segment_ids_BL, return_logits=False)
    pooled_BD = pool(out.hidden_BLD, mask_BL, pooling)
    return l2_normalize(pooled_BD) if normalize else pooled_BD


def tokenize_sentences(
    tokenizer: Tokenizer, texts: list[str], max_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens_BL, mask_BL, truncated): each text as [BOS] ids [EOS] (BERT: [CLS] ... [SEP],
    which the tokenizer reports as its bos / eos), right-padded with the pad id to the
    longest row, cut to `max_len` tokens (keeping [EOS]); `truncated` counts the texts cut."""
    bos, eos, pad = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
    if bos is None or eos is None:
        raise ValueError("sentence embeddings need a tokenizer with BOS/[CLS] and EOS/[SEP] ids")
    rows, truncated = [], 0
    for ids in (tokenizer.encode(t) for t in texts):
        if len(ids) + 2 > max_len:
            ids, truncated = ids[: max_len - 2], truncated + 1
        rows.append([bos, *ids, eos])
    L = max(len(r) for r in rows)
    tokens_BL = np.full((len(rows), L), 0 if pad is None else pad, np.int32)
    mask_BL = np.zeros((len(rows), L), np.int32)
    for i, row in enumerate(rows):
        tokens_BL[i, : len(row)], mask_BL[i, : len(row)] = row, 1
    return tokens_BL, mask_BL, truncated

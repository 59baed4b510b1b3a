"""Prefix-LM: bidirectional attention over each document's prefix, causal after it.

Raffel et al. 2020 (T5, arXiv:1910.10683, sec. 3.2.1, "prefix LM") and UniLM (Dong et al.
2019, arXiv:1905.03197) let a decoder-only Transformer read its input (the prefix) as an
encoder would, every prefix token seeing every other, and generate the rest causally. The
mask rule lives with the others (`llm.ops.masks.attention_mask`, `kv_prefix_BS`): query i sees
key j of its document iff pos_j <= pos_i or j is a prefix token. So no token ever sees a later
non-prefix token, and a model with no prefix is the causal LM exactly.

Design choices:
* The prefix is per token (`prefix_BL`, True on prefix tokens), not a length per row, so packed
  documents each keep their own prefix.
* `model.prefix_lm` makes `prefix_BL` required on every forward: a code path that does not
  pass one (the pretraining loss, the generation engine) is refused, not silently causal.
* SFT (`sft_prefix`): the prefix of a document is its tokens up to the input of its first
  loss token, i.e. the first prompt. The first target token itself is never in the prefix, so
  no loss position sees its own target. Later turns stay causal.
* Cached decoding primes the cache with the whole prompt as the prefix in one call (its queries
  see each other), then decodes causally with all-False flags; the cached slots need no flag
  because every later query is after them anyway.
"""

from __future__ import annotations

import jax.numpy as jnp

from llm.config import ModelConfig
from llm.typing import Array


def check_prefix(cfg: ModelConfig, prefix_BL: Array | None, shape: tuple[int, int]) -> None:
    """Refuses a prefix the model would ignore, and a prefix-LM forward without one."""
    if prefix_BL is None and cfg.prefix_lm:
        raise ValueError(
            "model.prefix_lm=true: every forward needs prefix_BL (True on prefix tokens; all "
            "False for plain causal tokens), e.g. from llm.model.prefix_lm.sft_prefix"
        )
    if prefix_BL is not None and not cfg.prefix_lm:
        raise ValueError("prefix_BL given, but model.prefix_lm=false would ignore it")
    if prefix_BL is not None and tuple(prefix_BL.shape) != tuple(shape):
        raise ValueError(f"prefix_BL has shape {tuple(prefix_BL.shape)}; tokens are {shape}")


def sft_prefix(loss_mask_BL: Array, positions_BL: Array, segment_ids_BL: Array) -> Array:
    """prefix_BL of an SFT batch: in each document, the tokens up to and including the input
    of its first loss position (the prompt of the first turn). Documents lie contiguously
    with positions restarting at 0, so a document starts at index t - positions[t].

    A document without loss tokens is prefix throughout (it has no target to leak)."""
    L = loss_mask_BL.shape[1]
    loss_BL = (loss_mask_BL > 0).astype(jnp.int32)
    before_BL = jnp.cumsum(loss_BL, axis=1) - loss_BL  # loss positions strictly before t
    start_BL = jnp.clip(jnp.arange(L)[None] - positions_BL, 0, L - 1)
    at_start_BL = jnp.take_along_axis(before_BL, start_BL, axis=1)
    return (before_BL == at_start_BL) & (segment_ids_BL != 0)

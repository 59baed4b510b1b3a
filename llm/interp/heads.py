"""Which attention heads copy: previous-token and induction-head scores.

An induction head (Elhage et al., 2021, "A Mathematical Framework for Transformer
Circuits"; Olsson et al., 2022, arXiv:2209.11895) completes `[A][B] ... [A] -> [B]`: a query
token attends to the key *just after* the previous occurrence of itself, and copies it. It
relies on a previous-token head in an earlier layer, which attends from each token to the
one before it. Both show up cleanly on a random block of tokens repeated twice: in the
second repeat every token's previous occurrence is exactly `period` positions back, so an
induction head puts its probability on the key `period - 1` positions back.

Scores are means of attention probabilities (`llm.model.forward(..., return_attention=True)`,
[Y layers, B, N heads, L queries, S keys]): 1.0 is a head that does nothing else, a uniform
causal head scores about 1 / (query position + 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model import forward
from llm.typing import Array, PyTree


def repeated_tokens(
    key: Array,
    batch: int,
    period: int,
    vocab_size: int,
    *,
    low: int = 0,
    bos_id: int | None = None,
) -> Array:
    """tokens_BL: per row, `period` distinct random ids in [low, vocab_size) repeated twice,
    after one `bos_id` if given (then L = 2 period + 1 and the scores take `offset=1`).

    The ids within a block are distinct so that each token's previous occurrence is unique.
    `low` skips the special ids at the bottom of a tokenizer's vocabulary.
    """
    if batch < 1 or period < 1:
        raise ValueError(
            f"repeated_tokens needs batch >= 1 and period >= 1, got {batch=} {period=}"
        )
    if not 0 <= low < vocab_size or vocab_size - low < period:
        raise ValueError(
            f"repeated_tokens draws {period=} distinct ids from [{low=}, {vocab_size=}): "
            f"only {vocab_size - low} available"
        )
    noise_BV = jax.random.uniform(key, (batch, vocab_size - low))
    block_BP = (jnp.argsort(noise_BV, axis=-1)[:, :period] + low).astype(jnp.int32)
    parts = [block_BP, block_BP]
    if bos_id is not None:
        parts.insert(0, jnp.full((batch, 1), bos_id, jnp.int32))
    return jnp.concatenate(parts, axis=1)


def _check_attention(attention_YBNLS) -> np.ndarray:
    a = np.asarray(attention_YBNLS, np.float32)
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            "expected self-attention probabilities [Y layers, B, N heads, L, L] "
            f"(forward(..., return_attention=True).attention_YBNLS), got shape {a.shape}"
        )
    return a


def previous_token_scores(attention_YBNLS) -> np.ndarray:
    """scores_YN: the mean probability a query puts on the key just before it (queries
    1..L-1, all batch rows)."""
    a = _check_attention(attention_YBNLS)
    if a.shape[-1] < 2:
        raise ValueError(f"previous-token scores need at least 2 positions, got L={a.shape[-1]}")
    diagonal_YBNL = np.diagonal(a, offset=-1, axis1=-2, axis2=-1)  # a[..., l, l - 1]
    return diagonal_YBNL.mean(axis=(1, 3))


def induction_scores(attention_YBNLS, period: int, *, offset: int = 0) -> np.ndarray:
    """scores_YN: the mean, over the queries of the second repeat (positions offset + period
    .. offset + 2 period - 1) and the batch, of the probability on the key just after the
    query token's previous occurrence (position q - period + 1). `offset`: tokens before
    the first repeat (1 with a BOS, as `repeated_tokens(..., bos_id=...)` makes)."""
    a = _check_attention(attention_YBNLS)
    L = a.shape[-1]
    if period < 1 or offset < 0 or offset + 2 * period > L:
        raise ValueError(
            f"induction scores read two repeats of {period=} after {offset=} tokens: "
            f"need period >= 1, offset >= 0 and offset + 2 period <= L={L}"
        )
    queries = np.arange(offset + period, offset + 2 * period)
    probs_YBNP = a[..., queries, queries - period + 1]
    return probs_YBNP.mean(axis=(1, 3))


@functools.partial(jax.jit, static_argnums=0)
def _attention(cfg: ModelConfig, params: PyTree, tokens_BL: Array) -> Array:
    return forward(cfg, params, tokens_BL, return_logits=False, return_attention=True)


def head_scores(
    cfg: ModelConfig, params: PyTree, tokens_BL: Array, period: int, *, offset: int = 0
) -> dict[str, np.ndarray]:
    """{"previous_token": scores_YN, "induction": scores_YN} of the model (`cfg` is the
    ModelConfig) on `tokens_BL`, a repeated sequence from `repeated_tokens`."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"head_scores takes the ModelConfig (cfg.model), got {type(cfg).__name__}")
    tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
    if tokens_BL.ndim != 2:
        raise ValueError(f"tokens_BL must be [batch, length], got shape {tokens_BL.shape}")
    attention_YBNLS = _attention(cfg, params, tokens_BL).attention_YBNLS
    return {
        "previous_token": previous_token_scores(attention_YBNLS),
        "induction": induction_scores(attention_YBNLS, period, offset=offset),
    }

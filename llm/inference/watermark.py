"""Green-list watermarking and its detector (Kirchenbauer et al., 2023, arXiv:2301.10226).

At each step the previous token and a secret key pick a pseudo-random "green" fraction
`GAMMA` of the vocabulary; generation adds `delta` to the green logits (the
`watermark_delta` sampling setting), so watermarked text holds more green tokens than the
GAMMA share chance gives. The detector needs only the tokenizer and the key: it counts green
tokens g among T scored tokens and reports z = (g - GAMMA T) / sqrt(T GAMMA (1 - GAMMA)),
which is approximately standard normal for text written without the watermark.

Greenness is an integer hash of (key, previous token, token) compared with GAMMA * 2^32, the
same in jnp (generation, on device, for the whole vocabulary) and NumPy (detection).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from llm.typing import Array

GAMMA = 0.25  # green share of the vocabulary
KEY = 0x5BD1E995  # the secret; change it and the detector sees plain text
Z_THRESHOLD = 4.0  # z above this is called watermarked (one-sided p ~ 3e-5)

_THRESHOLD = int(GAMMA * 2**32)


def _mix(x, xp):
    """A 32-bit avalanche hash (the murmur3 finaliser), in numpy or jnp uint32 arithmetic."""
    x = x ^ (x >> xp.uint32(16))
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> xp.uint32(13))
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> xp.uint32(16))


def _hash(prev, token, xp):
    seed = _mix(prev.astype(xp.uint32) ^ xp.uint32(KEY), xp)
    return _mix(seed + token.astype(xp.uint32) * xp.uint32(0x9E3779B9), xp)


def green_mask(prev_B: Array, vocab_size: int) -> Array:
    """float32 [B, V]: 1 where token v is green after previous token prev_B[b]."""
    tokens_V = jnp.arange(vocab_size, dtype=jnp.uint32)
    h_BV = _hash(prev_B[:, None], tokens_V[None], jnp)
    return (h_BV < jnp.uint32(_THRESHOLD)).astype(jnp.float32)


def is_green(prev: np.ndarray, token: np.ndarray) -> np.ndarray:
    """NumPy twin of `green_mask` for given (previous, token) pairs."""
    with np.errstate(over="ignore"):
        return _hash(np.asarray(prev, np.uint32), np.asarray(token, np.uint32), np) < np.uint32(
            _THRESHOLD
        )


def z_score(ids: Sequence[int], context: int | None = None) -> tuple[float, int]:
    """(z, scored tokens) of a token sequence; `context` is the token before ids[0], if known.

    Repeated (previous, token) pairs are scored once: repetition would otherwise let a single
    green bigram inflate the count (the paper's recommended de-duplication).
    """
    seq = ([context] if context is not None else []) + list(ids)
    pairs = sorted(set(itertools.pairwise(seq)))
    if not pairs:
        return 0.0, 0
    prev, token = (np.array(x, np.int64) for x in zip(*pairs, strict=True))
    greens, n = int(is_green(prev, token).sum()), len(pairs)
    return (greens - GAMMA * n) / math.sqrt(n * GAMMA * (1 - GAMMA)), n


def detect(ids: Sequence[int], context: int | None = None) -> bool:
    """Whether the sequence carries the watermark (z above `Z_THRESHOLD`)."""
    return z_score(ids, context)[0] > Z_THRESHOLD

"""Decode kernel (interpreted) equals its jnp reference on a ragged batch, every feature."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.kernels.decode_attention import decode_attention, decode_attention_reference
from llm.kernels.flash_common import flash_attention_reference
from tests.kernels.conftest import FAST_COMPILE

B, S, N, K, H = 3, 100, 6, 2, 32
LENGTHS = jnp.array([100, 37, 1], jnp.int32)  # full, partial, a single token: ragged batch


def _inputs(T, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (B, T, N, H), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (B, S, K, H), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (B, S, K, H), jnp.float32).astype(dtype)
    return q, k, v


def _run(fn, *args, **kwargs):
    jitted = jax.jit(lambda *a: fn(*a, **kwargs))
    return np.asarray(jitted.lower(*args).compile(FAST_COMPILE)(*args), np.float32)


CASES = {
    "one_token_gqa3": dict(T=1, features={}, block_k=16, num_splits=3),
    "two_tokens_window_softcap_alibi": dict(
        T=2,
        features=dict(sliding_window=10, softcap=3.0, alibi_slopes_N=jnp.linspace(0.1, 0.5, N)),
        block_k=32,
        num_splits=2,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_decode_matches_reference(name):
    case = CASES[name]
    q, k, v = _inputs(case["T"])
    features = dict(case["features"])
    slopes = features.pop("alibi_slopes_N", None)
    got = _run(
        decode_attention,
        q,
        k,
        v,
        LENGTHS,
        slopes,
        block_k=case["block_k"],
        num_splits=case["num_splits"],
        interpret=True,
        **features,
    )
    want = _run(decode_attention_reference, q, k, v, LENGTHS, slopes, **features)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)


def test_decode_reference_is_flash_reference_with_cache_segments():
    """The decode rule is the general mask rule with kv segment = (index < length)."""
    T = 2
    q, k, v = _inputs(T)
    q_pos = LENGTHS[:, None] - T + jnp.arange(T)
    kv_pos = jnp.broadcast_to(jnp.arange(S), (B, S))
    kv_seg = (kv_pos < LENGTHS[:, None]).astype(jnp.int32)
    general = flash_attention_reference(
        q, k, v, jnp.ones((B, T), jnp.int32), kv_seg, q_pos, kv_pos, sliding_window=4
    )
    decode = decode_attention_reference(q, k, v, LENGTHS, sliding_window=4)
    np.testing.assert_array_equal(np.asarray(general), np.asarray(decode))
    # the single-token sequence (length 1) sees only cache entry 0: its output is v[0]
    np.testing.assert_allclose(decode[2, 1], jnp.repeat(v[2, 0], N // K, axis=0), rtol=1e-6)


def test_decode_bf16_no_worse_than_reference():
    q, k, v = _inputs(1, jnp.bfloat16)
    got = _run(decode_attention, q, k, v, LENGTHS, block_k=16, num_splits=2, interpret=True)
    ref = _run(decode_attention_reference, q, k, v, LENGTHS)
    truth = _run(decode_attention_reference, *(x.astype(jnp.float32) for x in (q, k, v)), LENGTHS)
    assert np.abs(got - truth).max() <= 2 * np.abs(ref - truth).max() + 1e-3


def test_decode_rejects_bad_settings():
    q, k, v = _inputs(1)
    with pytest.raises(ValueError, match="block_k=24 must be a power of two"):
        decode_attention(q, k, v, LENGTHS, block_k=24, interpret=True)
    with pytest.raises(ValueError, match="num_splits=0"):
        decode_attention(q, k, v, LENGTHS, num_splits=0, interpret=True)
    with pytest.raises(ValueError, match="decode_attention: query heads"):
        decode_attention(q[:, :, :5], k, v, LENGTHS, interpret=True)

"""Attention dispatch and the jnp reference.

* The reference equals attention written out with Python loops (a reference for the reference).
* ``impl="pallas"`` (the GPU kernel, interpreted on CPU) equals ``impl="xla"``: output and grads.
* ``impl="auto"`` picks per backend and feature; unsupported combinations name what and where.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_inputs import random_qkv

from llm.kernels import flash_attention_tpu
from llm.kernels.flash_common import BlockSizes
from llm.ops import masks
from llm.ops.attention import attention, choose_impl, decode_attention
from llm.ops.attention_xla import attention_reference

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _qkv(B=2, L=12, S=12, N=4, K=2, H=8, seed=0):
    return random_qkv(B=B, L=L, S=S, N=N, K=K, H=H, seed=seed)


def _loop_attention(q, k, v, seg, pos, slopes, softcap, window):
    """Textbook attention, one query and one head at a time, in float64 numpy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, N, H = q.shape
    G = N // k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for n in range(N):
            for i in range(L):
                logits, values = [], []
                for j in range(L):
                    same_doc = seg[b, i] == seg[b, j] != 0
                    seen = pos[b, j] <= pos[b, i] and pos[b, i] - pos[b, j] < window
                    if not (same_doc and seen):
                        continue
                    s = q[b, i, n] @ k[b, j, n // G] / math.sqrt(H)
                    s = softcap * math.tanh(s / softcap)
                    logits.append(s - slopes[n] * abs(pos[b, i] - pos[b, j]))
                    values.append(v[b, j, n // G])
                if logits:
                    w = np.exp(np.array(logits) - max(logits))
                    out[b, i, n] = (w / w.sum()) @ np.array(values)
    return out


def test_reference_equals_loops():
    q, k, v = _qkv()
    seg = np.array([[1] * 5 + [2] * 5 + [0] * 2, [3] * 12], np.int32)
    pos = np.array([list(range(5)) * 2 + [0, 0], list(range(12))], np.int32)
    slopes = np.asarray(masks.alibi_slopes(4))

    @jax.jit
    def reference(q, k, v, seg, pos):
        mask = masks.attention_mask(seg, seg, pos, pos, causal=True, sliding_window=3)
        bias = masks.alibi_bias(jnp.asarray(slopes), pos, pos)
        return attention_reference(q, k, v, mask, bias_BNLS=bias, softcap=2.0)

    got = reference(q, k, v, seg, pos)
    want = _loop_attention(q, k, v, seg, pos, slopes, softcap=2.0, window=3)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def _out_and_grads(impl, q, k, v, **kwargs):
    def run(q, k, v):
        out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, impl=impl, **kwargs), q, k, v)
        return (out, *vjp(jnp.cos(out)))

    compiled = jax.jit(run).lower(q, k, v).compile(FAST_COMPILE)
    return [np.asarray(x) for x in compiled(q, k, v)]


def test_pallas_impl_equals_xla_with_every_feature():
    q, k, v = _qkv(L=20, S=20)
    seg = jnp.array([[1] * 9 + [2] * 8 + [0] * 3, [1] * 20], jnp.int32)
    pos = jnp.array([list(range(9)) + list(range(8)) + [0] * 3, list(range(20))], jnp.int32)
    kwargs = dict(
        q_segment_ids_BL=seg,
        q_positions_BL=pos,
        sliding_window=6,
        alibi_slopes_N=masks.alibi_slopes(4),
        softcap=5.0,
    )
    got = _out_and_grads("pallas", q, k, v, **kwargs)
    want = _out_and_grads("xla", q, k, v, **kwargs)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def test_auto_choice_per_backend_and_feature():
    common = dict(head_dim=128, softcap=None, dropout_rate=0.0)
    assert choose_impl("cpu", dtype=jnp.float32, **common) == "xla_flash"
    assert choose_impl("cpu", dtype=jnp.float32, **{**common, "dropout_rate": 0.1}) == "xla"
    assert choose_impl("tpu", dtype=jnp.bfloat16, **common) == "pallas"
    assert choose_impl("gpu", dtype=jnp.bfloat16, **common) == "pallas"
    assert choose_impl("gpu", dtype=jnp.float32, **{**common, "softcap": 30.0}) == "pallas"
    assert choose_impl("tpu", dtype=jnp.bfloat16, **{**common, "dropout_rate": 0.1}) == "xla"
    assert choose_impl("gpu", dtype=jnp.bfloat16, **{**common, "dropout_rate": 0.1}) == "xla"


def test_auto_on_cpu_runs_xla_flash():
    q, k, v = _qkv()
    np.testing.assert_array_equal(
        np.asarray(attention(q, k, v, impl="auto", softcap=3.0)),
        np.asarray(attention(q, k, v, impl="xla_flash", softcap=3.0)),
    )


def test_unsupported_combinations_name_feature_and_backend():
    q, k, v = _qkv()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"attention dropout is not supported by .*'pallas'"):
        attention(q, k, v, impl="pallas", dropout_rate=0.1, dropout_key=key)
    with pytest.raises(ValueError, match=r"logit soft-capping is not supported by .*'cudnn'"):
        attention(q, k, v, impl="cudnn", softcap=3.0)
    with pytest.raises(ValueError, match="'cudnn' needs a GPU; backend is 'cpu'"):
        attention(q, k, v, impl="cudnn")
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="block_k=64 must be >= 128 on TPU"):
        flash_attention_tpu.flash_attention(
            q, k, v, *(jnp.ones((2, 12), jnp.int32),) * 4, block_sizes=BlockSizes(block_k=64)
        )
    with pytest.raises(ValueError, match="flash_attention_tpu: q, k, v must share a dtype"):
        flash_attention_tpu.flash_attention(
            q.astype(jnp.bfloat16), k, v, *(jnp.ones((2, 12), jnp.int32),) * 4
        )


def test_decode_dispatch_agrees_across_impls():
    """pallas (the decode kernel, interpreted) and jax equal the xla path on a ragged cache."""
    q, _, _ = _qkv(B=2, L=1, N=4)
    _, k, v = _qkv(B=2, S=40, K=2, seed=1)
    lengths = jnp.array([40, 9], jnp.int32)
    kwargs = dict(sliding_window=7, alibi_slopes_N=masks.alibi_slopes(4))

    def compiled(impl):
        fn = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, impl=impl, **kwargs))
        return fn.lower(q, k, v, lengths).compile(FAST_COMPILE)

    want = np.asarray(compiled("xla")(q, k, v, lengths))
    pallas = compiled("pallas")
    np.testing.assert_allclose(pallas(q, k, v, lengths), want, atol=2e-6, rtol=2e-6)
    np.testing.assert_allclose(compiled("jax")(q, k, v, lengths), want, atol=2e-6, rtol=2e-6)
    # the cache beyond each length is ignored: garbage there changes nothing
    k_bad = k.at[1, 9:].set(1e4)
    np.testing.assert_allclose(pallas(q, k_bad, v, lengths), want, atol=2e-6, rtol=2e-6)

"""Flash attention in plain XLA (`llm/ops/attention_xla_flash.py`) against the jnp reference.

The custom VJP recomputes probabilities from the saved log-sum-exp and may skip the causal
upper triangle block by block; both must leave outputs and every gradient equal to
differentiating the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_inputs import random_qkv

from llm.ops import masks
from llm.ops.attention import attention
from llm.ops.attention_xla import attention_reference
from llm.ops.attention_xla_flash import flash_attention_xla, query_spans

FAST_COMPILE = {"xla_backend_optimization_level": 0}
# two packed documents and padding in row 0; one document in row 1
SEG = jnp.array([[1] * 9 + [2] * 8 + [0] * 3, [1] * 20], jnp.int32)
POS = jnp.array([list(range(9)) + list(range(8)) + [0] * 3, list(range(20))], jnp.int32)


def _qkv(B=2, L=20, S=20, N=4, K=2, H=8, seed=0):
    return random_qkv(B=B, L=L, S=S, N=N, K=K, H=H, seed=seed)


def _out_and_grads(fn, *args):
    """fn's output and the gradients of sum(cos(out)) w.r.t. every argument."""

    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        return (out, *vjp(jnp.cos(out)))

    compiled = jax.jit(run).lower(*args).compile(FAST_COMPILE)
    return [np.asarray(x) for x in compiled(*args)]


def _assert_close(got, want, names):
    for name, g, w in zip(names, got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_equals_reference_with_bias_windows_padding_and_gqa(blocks, softcap):
    q, k, v = _qkv()
    mask = masks.attention_mask(SEG, SEG, POS, POS, causal=True, sliding_window=6)
    mask &= masks.index_causal_mask(20)
    bias = masks.alibi_bias(masks.alibi_slopes(4), POS, POS)

    def ours(q, k, v, bias):
        return flash_attention_xla(
            q, k, v, mask, bias_BNLS=bias, softcap=softcap, causal_blocks=blocks
        )

    def reference(q, k, v, bias):
        return attention_reference(q, k, v, mask, bias_BNLS=bias, softcap=softcap)

    names = ("out", "dq", "dk", "dv", "dbias")
    got, want = (_out_and_grads(f, q, k, v, bias) for f in (ours, reference))
    _assert_close(got, want, names)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_few_queries_path_equals_reference(softcap):
    """3 queries x 2 per kv head <= FEW_QUERIES: the transposed-logits forward (decoding)."""
    q, k, v = _qkv(L=3, S=20, seed=2)
    pos_q = jnp.broadcast_to(jnp.arange(14, 17), (2, 3))
    mask = masks.attention_mask(SEG[:, 14:17], SEG, pos_q, POS, sliding_window=9)
    bias = masks.alibi_bias(masks.alibi_slopes(4), pos_q, POS)

    def ours(q, k, v, bias):
        return flash_attention_xla(q, k, v, mask, bias_BNLS=bias, softcap=softcap)

    def reference(q, k, v, bias):
        return attention_reference(q, k, v, mask, bias_BNLS=bias, softcap=softcap)

    got, want = (_out_and_grads(f, q, k, v, bias) for f in (ours, reference))
    _assert_close(got, want, ("out", "dq", "dk", "dv", "dbias"))


def test_rows_that_see_nothing_are_zero_with_zero_gradients():
    q, k, v = _qkv()
    mask = masks.attention_mask(SEG, SEG, POS, POS) & masks.index_causal_mask(20)
    out, dq, dk, dv = _out_and_grads(
        lambda q, k, v: flash_attention_xla(q, k, v, mask, causal_blocks=4), q, k, v
    )
    assert np.isfinite(out).all() and np.isfinite(dk).all()
    np.testing.assert_array_equal(out[0, 17:], 0.0)  # padding rows
    np.testing.assert_array_equal(dq[0, 17:], 0.0)
    np.testing.assert_array_equal(dk[0, 17:], 0.0)  # padding keys are seen by nobody
    np.testing.assert_array_equal(dv[0, 17:], 0.0)


def test_dispatch_equals_reference_for_self_attention_and_cache_layouts():
    q, k, v = _qkv()
    names = ("out", "dq", "dk", "dv")
    ids = dict(q_segment_ids_BL=SEG, q_positions_BL=POS, sliding_window=7)
    _assert_close(
        _out_and_grads(lambda q, k, v: attention(q, k, v, impl="xla_flash", **ids), q, k, v),
        _out_and_grads(lambda q, k, v: attention(q, k, v, impl="xla", **ids), q, k, v),
        names,
    )
    # a decode-style call: 3 new queries at positions 10..12 against 16 cache slots
    q3, k16, v16 = _qkv(L=3, S=16, seed=1)
    cache = dict(
        q_segment_ids_BL=jnp.ones((2, 3), jnp.int32),
        q_positions_BL=jnp.broadcast_to(jnp.arange(10, 13), (2, 3)),
        kv_segment_ids_BS=(jnp.arange(16) < 13).astype(jnp.int32)[None].repeat(2, 0),
        kv_positions_BS=jnp.broadcast_to(jnp.arange(16), (2, 16)),
    )
    _assert_close(
        _out_and_grads(lambda q, k, v: attention(q, k, v, impl="xla_flash", **cache), q3, k16, v16),
        _out_and_grads(lambda q, k, v: attention(q, k, v, impl="xla", **cache), q3, k16, v16),
        names,
    )


@pytest.mark.parametrize("impl", ["xla", "xla_flash"])
def test_self_attention_never_sees_a_later_index(impl):
    """Positions that run backwards must not open the future to a query (index rule)."""
    q, k, v = _qkv(B=1, L=8, S=8)
    backwards = jnp.arange(8)[::-1][None]  # query 2 sits at position 5

    def seen_by_query_2(**kv_ids):
        def out(v):
            return attention(q, k, v, q_positions_BL=backwards, impl=impl, **kv_ids)[0, 2].sum()

        return np.abs(np.asarray(jax.grad(out)(v))[0]).sum(axis=(1, 2)) > 0

    # self-attention: keys 0, 1 are at later positions, keys 3.. at later indices
    np.testing.assert_array_equal(seen_by_query_2(), [0, 0, 1, 0, 0, 0, 0, 0])
    # given explicitly as key ids (not self-attention), the position rule alone decides
    explicit = dict(kv_segment_ids_BS=jnp.ones((1, 8), jnp.int32), kv_positions_BS=backwards)
    np.testing.assert_array_equal(seen_by_query_2(**explicit), [0, 0, 1, 1, 1, 1, 1, 1])


def test_query_spans_cover_every_row_once_and_end_keys_at_the_row():
    assert query_spans(20, 20, 1) == ((0, 20, 20),)
    spans = query_spans(20, 20, 3)
    assert [s[0] for s in spans[1:]] == [s[1] for s in spans[:-1]]
    assert spans[0][0] == 0 and spans[-1][1] == 20
    assert all(end == keys for _, end, keys in spans)


def test_blocks_need_self_attention_shapes():
    q, k, v = _qkv(L=4, S=8)
    mask = jnp.ones((2, 4, 8), bool)
    with pytest.raises(ValueError, match="causal_blocks needs as many keys as queries"):
        flash_attention_xla(q, k, v, mask, causal_blocks=2)

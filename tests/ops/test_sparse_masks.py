"""Sparse attention patterns (Child et al. 2019) and the prefix-LM rule as mask rules."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_inputs import random_qkv

from llm.ops import masks
from llm.ops.attention import attention
from llm.ops.attention_xla import attention_reference

# two packed documents (positions restart) then padding
SEG = [1] * 11 + [2] * 7 + [0] * 2
POS = list(range(11)) + list(range(7)) + [0, 0]


def loop_mask(pattern, block, causal=True, prefix=None, seg=SEG, pos=POS):
    """The rules written out one (query, key) pair at a time from their definitions."""
    L = len(seg)
    out = np.zeros((L, L), bool)
    for i, j in itertools.product(range(L), range(L)):
        if seg[i] != seg[j] or seg[j] == 0:
            continue
        if causal and pos[j] > pos[i] and not (prefix is not None and prefix[j]):
            continue
        d = abs(pos[i] - pos[j])
        if pattern == "strided" and not (d < block or d % block == 0):
            continue
        if pattern == "block_local" and pos[i] // block != pos[j] // block:
            continue
        out[i, j] = True
    return out


def rule_mask(pattern, block, causal=True, prefix=None):
    seg, pos = jnp.asarray([SEG]), jnp.asarray([POS])
    kv_prefix = None if prefix is None else jnp.asarray([prefix])
    return np.asarray(
        masks.attention_mask(
            seg, seg, pos, pos, causal=causal, pattern=pattern, block=block,
            kv_prefix_BS=kv_prefix,
        )[0]
    )  # fmt: skip


@pytest.mark.parametrize("pattern", ["strided", "block_local"])
@pytest.mark.parametrize("block", [1, 3, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_pattern_equals_loop(pattern, block, causal):
    want = loop_mask(pattern, block, causal)
    np.testing.assert_array_equal(rule_mask(pattern, block, causal), want)


def test_patterns_are_sparser_than_dense_and_differ():
    dense = loop_mask("dense", 0)
    np.testing.assert_array_equal(rule_mask("dense", 0), dense)
    for pattern in ("strided", "block_local"):
        sparse = rule_mask(pattern, 3)
        assert sparse.sum() < dense.sum() and not (sparse & ~dense).any()
    # strided keeps (10, 1): distance 9 is a multiple of 3; block_local drops it
    assert rule_mask("strided", 3)[10, 1] and not rule_mask("block_local", 3)[10, 1]


def test_prefix_rule_equals_loop():
    prefix = [True] * 4 + [False] * 7 + [True] * 2 + [False] * 7
    np.testing.assert_array_equal(
        rule_mask("dense", 0, prefix=prefix), loop_mask("dense", 0, prefix=prefix)
    )
    mask = rule_mask("dense", 0, prefix=prefix)
    assert mask[0, 3] and not mask[0, 4]  # the prefix sees itself whole, nothing after it
    assert mask[11, 12] and not mask[3, 12]  # document 2's prefix, unseen by document 1


def test_unknown_pattern_and_bad_block_are_refused():
    pos = masks.default_positions(1, 4)
    with pytest.raises(ValueError, match="unknown attention pattern 'dilated'"):
        masks.sparse_pattern(pos, pos, "dilated", 2)
    with pytest.raises(ValueError, match="block=0"):
        masks.sparse_pattern(pos, pos, "strided", 0)


@pytest.fixture(scope="module")
def qkv():
    return random_qkv(B=1, L=len(SEG), S=len(SEG), N=4, K=2, H=8, seed=3)


@pytest.mark.parametrize("impl", ["xla", "xla_flash", "jax"])
@pytest.mark.parametrize("pattern", ["strided", "block_local"])
def test_backends_apply_the_pattern(qkv, impl, pattern):
    seg, pos = jnp.asarray([SEG]), jnp.asarray([POS])
    want = attention_reference(*qkv, jnp.asarray(loop_mask(pattern, 3))[None])
    got = attention(
        *qkv, q_segment_ids_BL=seg, q_positions_BL=pos, pattern=pattern, pattern_block=3,
        impl=impl,
    )  # fmt: skip
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_pallas_refuses_the_pattern_and_the_prefix(qkv):
    with pytest.raises(ValueError, match="sparse attention pattern 'strided' is not supported"):
        attention(*qkv, pattern="strided", pattern_block=2, impl="pallas")
    with pytest.raises(ValueError, match="prefix-LM masking is not supported"):
        attention(*qkv, kv_prefix_BS=jnp.zeros((1, len(SEG)), bool), impl="pallas")


@pytest.mark.parametrize("pattern", ["strided", "block_local"])
def test_query_never_depends_on_a_key_outside_its_pattern(qkv, pattern):
    """d out[i] / d (k[j], v[j]) is zero exactly where the loop mask says j is hidden."""
    q, k, v = qkv
    seg, pos = jnp.asarray([SEG]), jnp.asarray([POS])

    def out_row(kv, i):
        out = attention(q, *kv, q_segment_ids_BL=seg, q_positions_BL=pos, pattern=pattern,
                        pattern_block=3, impl="xla_flash")  # fmt: skip
        return out[0, i].sum()

    want = loop_mask(pattern, 3)
    for i in (5, 10, 17):
        gk, gv = jax.grad(out_row)((k, v), i)
        touched = np.asarray((jnp.abs(gk) + jnp.abs(gv)).sum((0, 2, 3)) > 0)
        np.testing.assert_array_equal(touched, want[i], err_msg=f"query {i}")


def test_dense_default_program_is_the_segment_and_causal_rule_alone():
    """The default (dense) mask's jaxpr is exactly that of the segment + causal rule written
    out here, with no trace of the pattern code; a sparse pattern's is not."""
    pos = masks.default_positions(1, 8)
    seg = jnp.ones((1, 8), jnp.int32)

    def restated(seg, pos):
        q_seg, k_seg = seg[:, :, None], seg[:, None, :]
        mask = (q_seg == k_seg) & (k_seg != 0)
        delta = pos[:, :, None] - pos[:, None, :]
        return mask & (delta >= 0)

    def program(**kw):
        return str(jax.make_jaxpr(lambda s, p: masks.attention_mask(s, s, p, p, **kw))(seg, pos))

    want = str(jax.make_jaxpr(restated)(seg, pos))
    assert program() == want
    assert program(pattern="dense", block=4) == want
    assert program(pattern="strided", block=4) != want
    assert program(pattern="block_local", block=4) != want

"""Block ranges: exact where the answer is known by hand, and never drop a visible pair."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from llm.kernels.flash_common import BlockSizes, block_ranges, clamp_block
from llm.ops import masks
from tests.kernels.conftest import packed_ids


def _ranges(seg, pos, block, **features):
    seg, pos = jnp.asarray(seg), jnp.asarray(pos)
    return [np.asarray(x)[0] for x in block_ranges(seg, seg, pos, pos, block, block, **features)]


def test_causal_ranges_stop_at_the_diagonal():
    seg, pos = np.ones((1, 64), np.int32), np.arange(64, dtype=np.int32)[None]
    kv_lo, kv_hi, q_lo, q_hi = _ranges(seg, pos, 16, causal=True, sliding_window=None)
    assert kv_lo.tolist() == [0, 0, 0, 0] and kv_hi.tolist() == [1, 2, 3, 4]
    assert q_lo.tolist() == [0, 1, 2, 3] and q_hi.tolist() == [4, 4, 4, 4]


def test_sliding_window_ranges_start_late():
    # Window 16 with 16-row blocks: query block i reaches back into key block i - 1 only.
    seg, pos = np.ones((1, 64), np.int32), np.arange(64, dtype=np.int32)[None]
    kv_lo, kv_hi, _, _ = _ranges(seg, pos, 16, causal=True, sliding_window=16)
    assert kv_lo.tolist() == [0, 0, 1, 2] and kv_hi.tolist() == [1, 2, 3, 4]


def test_packed_documents_and_padding_are_skipped():
    # Doc 1 = tokens 0..31, doc 2 = 32..55, padding 56..63. Query block 2 (doc 2, positions
    # 0..15) sees only key block 2; block 3 (doc 2 positions 16..23, then padding) sees key
    # blocks 2..3: padding rows must not widen its range back into doc 1.
    seg = np.array([[1] * 32 + [2] * 24 + [0] * 8], np.int32)
    pos = np.array([list(range(32)) + list(range(24)) + [0] * 8], np.int32)
    kv_lo, kv_hi, _, _ = _ranges(seg, pos, 16, causal=True, sliding_window=None)
    assert kv_lo.tolist() == [0, 0, 2, 2] and kv_hi.tolist() == [1, 2, 3, 4]


def test_all_padding_key_blocks_are_never_live():
    seg = np.array([[1] * 16 + [0] * 16], np.int32)
    pos = np.array([list(range(16)) + [0] * 16], np.int32)
    kv_lo, kv_hi, q_lo, q_hi = _ranges(seg, pos, 16, causal=False, sliding_window=None)
    assert kv_lo.tolist() == [0, 0] and kv_hi.tolist() == [1, 0]  # padding queries: nothing
    assert (q_lo[1], q_hi[1]) == (0, 0)  # the padding key block is in no range


@pytest.mark.parametrize("causal,window", [(True, None), (True, 5), (False, None), (False, 7)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranges_cover_every_visible_pair(causal, window, seed):
    """Property: every pair the mask allows lies in both ranges (skipping is only ever safe)."""
    L, block = 96, 16
    seg, pos = packed_ids(2, L, seed)
    mask = np.asarray(
        masks.attention_mask(seg, seg, pos, pos, causal=causal, sliding_window=window)
    )
    kv_lo, kv_hi, q_lo, q_hi = (
        np.asarray(x)
        for x in block_ranges(
            jnp.asarray(seg),
            jnp.asarray(seg),
            jnp.asarray(pos),
            jnp.asarray(pos),
            block,
            block,
            causal=causal,
            sliding_window=window,
        )
    )
    b, l_idx, s_idx = np.nonzero(mask)
    i, j = l_idx // block, s_idx // block
    assert np.all((kv_lo[b, i] <= j) & (j < kv_hi[b, i]))
    assert np.all((q_lo[b, j] <= i) & (i < q_hi[b, j]))
    assert (kv_hi - kv_lo).sum() < kv_hi.size * (L // block)  # and something was skipped


def test_block_sizes_validated_and_clamped():
    with pytest.raises(ValueError, match="block_k=48 must be a power of two"):
        BlockSizes(block_k=48)
    assert clamp_block(128, 5, 16) == 16 and clamp_block(128, 40, 16) == 64
    assert clamp_block(64, 1000, 16) == 64


def test_kernels_reject_bad_inputs_naming_the_kernel():
    from llm.kernels import flash_attention_gpu

    q = jnp.zeros((2, 8, 4, 16))
    kv = jnp.zeros((2, 8, 2, 16))
    ids = (jnp.ones((2, 8), jnp.int32),) * 4
    f = flash_attention_gpu.flash_attention
    with pytest.raises(ValueError, match=r"flash_attention_gpu: kv_positions must have shape"):
        f(q, kv, kv, *ids[:3], jnp.ones((2, 9), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="flash_attention_gpu: sliding_window=0 must be >= 1"):
        f(q, kv, kv, *ids, sliding_window=0, interpret=True)
    with pytest.raises(ValueError, match=r"flash_attention_gpu: softcap=-1.0 must be > 0"):
        f(q, kv, kv, *ids, softcap=-1.0, interpret=True)
    with pytest.raises(ValueError, match="query heads N=4 must be a multiple of kv heads K=3"):
        f(q, jnp.zeros((2, 8, 3, 16)), jnp.zeros((2, 8, 3, 16)), *ids, interpret=True)
    with pytest.raises(ValueError, match="dtype int32 unsupported"):
        f(*(x.astype(jnp.int32) for x in (q, kv, kv)), *ids, interpret=True)

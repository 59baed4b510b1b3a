"""Decode attention in Pallas (Triton lowering): a few new queries against a ragged KV cache.

During generation each sequence b adds T (usually 1) tokens, already written into its cache,
which now holds lengths[b] valid entries at indices = positions 0..lengths[b]-1. Query t sits
at position lengths[b] - T + t and may see cache entry s iff s < lengths[b], s <= its position
and (with a window) position - s < window: the rule of `llm/ops/masks.py` with kv segment id
1 for s < lengths[b], else 0 (see `decode_attention_reference`).

Why a separate kernel: with T ~ 1 the work is reading the cache, not multiplying. So
* all G query heads that share a kv head (and all T new tokens) form the rows of one tile, and
  each K/V block is read once per kv head, not once per query head (grouped-query decoding);
* programs only walk the blocks below their own sequence's length (ragged batch), so a short
  sequence in a batch of long ones costs its own length;
* the cache is split along its length into `num_splits` programs whose partial results are
  merged by their log-sum-exp (Flash-Decoding, Dao et al., 2023), so a batch of one still
  fills the GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from llm.kernels import flash_common as fc
from llm.ops import masks
from llm.ops.attention_xla import attention_reference
from llm.typing import Array

MIN_ROWS = 16  # Triton's tl.dot needs every matmul dimension >= 16


def decode_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    lengths_B: Array,
    alibi_slopes_N: Array | None = None,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    block_k: int = 64,
    num_splits: int = 4,
    interpret: bool = False,
) -> Array:
    """out_BTNH for T new tokens per sequence; lengths_B counts valid cache entries (incl. them)."""
    fc.check_inputs(q_BTNH, k_BSKH, v_BSKH, "decode_attention")
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    if block_k < MIN_ROWS or block_k & (block_k - 1):
        raise ValueError(f"{block_k=} must be a power of two >= {MIN_ROWS}")
    if num_splits < 1:
        raise ValueError(f"{num_splits=} must be >= 1")
    st = fc.Static(
        causal=True,
        sliding_window=sliding_window,
        softcap=softcap,
        scale=H**-0.5,
        has_alibi=alibi_slopes_N is not None,
        blocks=fc.BlockSizes(),
        interpret=interpret,
    )
    bk = fc.clamp_block(block_k, S, MIN_ROWS)
    n_blocks = -(-S // bk)
    per_split = -(-n_blocks // num_splits)
    Sp, Hp = n_blocks * bk, max(MIN_ROWS, pl.next_power_of_2(H))
    R = max(MIN_ROWS, pl.next_power_of_2(T * G))
    k_p, v_p = (fc.pad_axis(fc.pad_axis(x, 1, Sp), 3, Hp) for x in (k_BSKH, v_BSKH))
    q_BKRH, pos_BKR, slope_KR, lo_B, hi_B = _rows(q_BTNH, lengths_B, alibi_slopes_N, st, K, R, bk)
    q_BKRH = fc.pad_axis(q_BKRH, 3, Hp)
    out, lse = pl.pallas_call(
        functools.partial(_kernel, st=st, block_k=bk, per_split=per_split),
        grid=(B, K, num_splits),
        in_specs=[
            _full((B,)),
            _full((B,)),
            _full((B,)),
            pl.BlockSpec((None, None, R, Hp), lambda b, h, s: (b, h, 0, 0)),
            pl.BlockSpec((None, Sp, None, Hp), lambda b, h, s: (b, 0, h, 0)),
            pl.BlockSpec((None, Sp, None, Hp), lambda b, h, s: (b, 0, h, 0)),
            pl.BlockSpec((None, None, R), lambda b, h, s: (b, h, 0)),
            pl.BlockSpec((None, R), lambda b, h, s: (h, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, R, Hp), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, R), lambda b, h, s: (b, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((B, K, num_splits, R, Hp), jnp.float32),
            jax.ShapeDtypeStruct((B, K, num_splits, R), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="decode_attention",
    )(lengths_B.astype(jnp.int32), lo_B, hi_B, q_BKRH, k_p, v_p, pos_BKR, slope_KR)
    out_BKRH = _merge_splits(out, lse)[..., :H]
    out_BKTGH = out_BKRH[:, :, : T * G].reshape(B, K, T, G, H)
    return out_BKTGH.transpose(0, 2, 1, 3, 4).reshape(B, T, N, H).astype(q_BTNH.dtype)


def _full(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _rows(q_BTNH, lengths_B, slopes_N, st, K: int, R: int, bk: int):
    """Group-major query rows (row = t * G + g), their positions, slopes and live block range."""
    B, T, N, H = q_BTNH.shape
    G = N // K
    q_BKRH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4).reshape(B, K, T * G, H)
    q_BKRH = fc.pad_axis(q_BKRH, 2, R)
    pos_BT = lengths_B[:, None].astype(jnp.int32) - T + jnp.arange(T, dtype=jnp.int32)
    pos_BR = fc.pad_axis(jnp.repeat(pos_BT, G, axis=1), 1, R, value=-1)  # -1: sees nothing
    pos_BKR = jnp.broadcast_to(pos_BR[:, None], (B, K, R))
    slopes_N = jnp.zeros((N,), jnp.float32) if slopes_N is None else slopes_N
    slope_KR = fc.pad_axis(
        jnp.tile(slopes_N.astype(jnp.float32).reshape(K, 1, G), (1, T, 1)).reshape(K, T * G), 1, R
    )
    hi_B = -(-lengths_B.astype(jnp.int32) // bk)
    lo_B = jnp.zeros_like(hi_B)
    if st.sliding_window is not None:
        first_visible = jnp.maximum(pos_BT[:, 0] - st.sliding_window + 1, 0)
        lo_B = jnp.minimum(first_visible // bk, hi_B)
    return q_BKRH, pos_BKR, slope_KR, lo_B.astype(jnp.int32), hi_B.astype(jnp.int32)


def _kernel(
    len_ref,
    lo_ref,
    hi_ref,
    q_ref,
    k_ref,
    v_ref,
    pos_ref,
    slope_ref,
    o_ref,
    lse_ref,
    *,
    st: fc.Static,
    block_k: int,
    per_split: int,
):
    b, s = pl.program_id(0), pl.program_id(2)
    q = q_ref[...]
    q_pos, slope = pos_ref[...][:, None], slope_ref[...][:, None]
    length = len_ref[b]
    lo = jnp.maximum(lo_ref[b], s * per_split)
    hi = jnp.minimum(hi_ref[b], (s + 1) * per_split)

    def body(j, carry):
        acc, m, l = carry
        ks = pl.ds(j * block_k, block_k)
        k_pos = (j * block_k + jnp.arange(block_k, dtype=jnp.int32))[None, :]
        s_RK, _ = fc.tile_logits(q, k_ref[ks, :], st)
        if st.has_alibi:
            s_RK = s_RK + fc.tile_alibi(slope, q_pos, k_pos)
        visible = (k_pos < length) & (k_pos <= q_pos)
        if st.sliding_window is not None:
            visible &= q_pos - k_pos < st.sliding_window
        s_RK = jnp.where(visible, s_RK, fc.MASK_VALUE)
        m_new = jnp.maximum(m, s_RK.max(axis=1))
        correction = jnp.exp(m - m_new)
        probs = jnp.where(visible, jnp.exp(s_RK - m_new[:, None]), 0.0)
        v = v_ref[ks, :]
        pv = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return correction[:, None] * acc + pv, m_new, correction * l + probs.sum(axis=1)

    rows, hp = q.shape
    init = (
        jnp.zeros((rows, hp), jnp.float32),
        jnp.full((rows,), fc.MASK_VALUE, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    acc, m, l = jax.lax.fori_loop(lo, jnp.maximum(lo, hi), body, init)
    l_safe = jnp.where(l == 0.0, 1.0, l)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(l == 0.0, fc.MASK_VALUE, m + jnp.log(l_safe))


def _merge_splits(out_BKPRH: Array, lse_BKPR: Array) -> Array:
    """Combine per-split normalised outputs by their log-sum-exp; empty splits weigh 0."""
    m_BK1R = lse_BKPR.max(axis=2, keepdims=True)
    w_BKPR = jnp.exp(lse_BKPR - m_BK1R)
    w_BKPR = w_BKPR / w_BKPR.sum(axis=2, keepdims=True)
    return jnp.einsum("BKPR,BKPRH->BKRH", w_BKPR, out_BKPRH)


def decode_attention_reference(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    lengths_B: Array,
    alibi_slopes_N: Array | None = None,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> Array:
    """Plain jnp decode attention: masks.py with kv segment = (index < length)."""
    B, T = q_BTNH.shape[:2]
    S = k_BSKH.shape[1]
    lengths_B1 = lengths_B[:, None].astype(jnp.int32)
    q_pos_BT = lengths_B1 - T + jnp.arange(T, dtype=jnp.int32)
    kv_pos_BS = masks.default_positions(B, S)
    kv_seg_BS = (kv_pos_BS < lengths_B1).astype(jnp.int32)
    mask_BTS = masks.attention_mask(
        jnp.ones((B, T), jnp.int32),
        kv_seg_BS,
        q_pos_BT,
        kv_pos_BS,
        causal=True,
        sliding_window=sliding_window,
    )
    bias = None
    if alibi_slopes_N is not None:
        bias = masks.alibi_bias(alibi_slopes_N, q_pos_BT, kv_pos_BS)
    return attention_reference(q_BTNH, k_BSKH, v_BSKH, mask_BTS, bias_BNLS=bias, softcap=softcap)

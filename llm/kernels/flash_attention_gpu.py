"""Flash attention for GPUs in Pallas (Triton lowering), forward and backward.

FlashAttention-2 (Dao, 2023, arXiv:2307.08691): each program owns one block of query rows of
one head, streams the key/value blocks of its live range (`flash_common.block_ranges`) through
an online softmax, and saves the log-sum-exp for the backward pass. The backward pass is two
kernels: dq (one program per query block, loop over key blocks) and dk/dv (one program per key
block of a *kv head*, loop over the G query heads of its group and their query blocks), so
grouped-query attention never repeats K/V and dk/dv need no atomics or reduction afterwards.

Layout is the model's [B, L, N, H]; K/V blocks are addressed by kv head n // G. Sequences are
padded to the block sizes with segment id 0 (masked by the mask rule), the head dim to a power
of two >= 16 with zeros (Triton tiles are powers of two); outputs are sliced back.

`interpret=True` runs the same kernels through Pallas' interpreter on any backend (how the
CPU tests and `attention(impl="pallas")` on CPU run them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from llm.kernels import flash_common as fc
from llm.kernels.flash_common import BlockSizes, Static, flash_attention_reference
from llm.typing import Array

__all__ = ["DEFAULT_BLOCKS", "flash_attention", "flash_attention_reference"]

# Triton FA2 folklore for A100/H100 (128-row query tiles in the forward pass, 64x64 tiles in the
# backward pass, which keeps five tiles live); not tuned on hardware here (no GPU on CI).
DEFAULT_BLOCKS = BlockSizes(block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64)
# head_dim 256 doubles every tile's shared memory; halve the tiles to stay inside ~228 KiB.
DEFAULT_BLOCKS_HEAD256 = BlockSizes(block_q=64, block_k=32, block_q_bwd=32, block_k_bwd=32)
MIN_BLOCK = 16  # Triton's tl.dot needs every matmul dimension >= 16


def flash_attention(
    q_BLNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    q_segment_ids_BL: Array,
    kv_segment_ids_BS: Array,
    q_positions_BL: Array,
    kv_positions_BS: Array,
    alibi_slopes_N: Array | None = None,
    *,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> Array:
    """Attention out_BLNH (q's dtype); masks as in `llm/ops/masks.py`; differentiable in q, k, v."""
    fc.check_inputs(q_BLNH, k_BSKH, v_BSKH, "flash_attention_gpu")
    st = Static(
        causal=causal,
        sliding_window=sliding_window,
        softcap=softcap,
        scale=q_BLNH.shape[-1] ** -0.5,
        has_alibi=alibi_slopes_N is not None,
        blocks=block_sizes
        or (DEFAULT_BLOCKS if q_BLNH.shape[-1] <= 128 else DEFAULT_BLOCKS_HEAD256),
        interpret=interpret,
    )
    ids = (q_segment_ids_BL, kv_segment_ids_BS, q_positions_BL, kv_positions_BS)
    fc.check_features(ids, q_BLNH, k_BSKH, sliding_window, softcap, "flash_attention_gpu")
    ids = tuple(x.astype(jnp.int32) for x in ids)
    return _flash(st, q_BLNH, k_BSKH, v_BSKH, *ids, alibi_slopes_N)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
    return _forward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)[0]


def _flash_fwd(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
    out, lse = _forward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)
    return out, (q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, out, lse)


def _flash_bwd(st, res, do):
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, out, lse = res
    dq, dk, dv = _backward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, out, lse, do)
    dslopes = None if slopes is None else jnp.zeros_like(slopes)
    return dq, dk, dv, None, None, None, None, dslopes


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- layout


class _Padded:
    """Inputs padded to whole blocks; block sizes clamped for short sequences."""

    def __init__(self, st: Static, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
        B, L, N, H = q.shape
        S, K = k.shape[1], k.shape[2]
        b = st.blocks
        self.shape = (B, L, N, H, S, K)
        self.bq = fc.clamp_block(b.block_q, L, MIN_BLOCK)
        self.bk = fc.clamp_block(b.block_k, S, MIN_BLOCK)
        self.bq_bwd = fc.clamp_block(b.block_q_bwd, L, MIN_BLOCK)
        self.bk_bwd = fc.clamp_block(b.block_k_bwd, S, MIN_BLOCK)
        self.Lp = fc.round_up(L, max(self.bq, self.bq_bwd))
        self.Sp = fc.round_up(S, max(self.bk, self.bk_bwd))
        self.Hp = max(MIN_BLOCK, pl.next_power_of_2(H))
        self.q = self.pad_q(q)
        self.k = fc.pad_axis(fc.pad_axis(k, 1, self.Sp), 3, self.Hp)
        self.v = fc.pad_axis(fc.pad_axis(v, 1, self.Sp), 3, self.Hp)
        self.q_seg, self.q_pos = (fc.pad_axis(x, 1, self.Lp) for x in (q_seg, q_pos))
        self.kv_seg, self.kv_pos = (fc.pad_axis(x, 1, self.Sp) for x in (kv_seg, kv_pos))
        self.slopes = jnp.zeros((N,), jnp.float32) if slopes is None else slopes
        self.slopes = self.slopes.astype(jnp.float32)

    def pad_q(self, x_BLNH):
        return fc.pad_axis(fc.pad_axis(x_BLNH, 1, self.Lp), 3, self.Hp)

    def ranges(self, st: Static, bq: int, bk: int):
        return fc.block_ranges(
            self.q_seg,
            self.kv_seg,
            self.q_pos,
            self.kv_pos,
            bq,
            bk,
            causal=st.causal,
            sliding_window=st.sliding_window,
        )

    def compiler_params(self, bq: int, bk: int):
        warps = 4 if self.Hp <= 64 and bq * bk <= 128 * 64 else 8
        return plgpu.CompilerParams(num_warps=warps, num_stages=2)


def _full(shape):
    """BlockSpec of a whole small array (range tables, slopes), same block every program."""
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


# ----------------------------------------------------------------------------- forward


def _forward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
    p = _Padded(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)
    B, L, N, H, _, K = p.shape
    G, bq, bk, Lp, Sp, Hp = N // K, p.bq, p.bk, p.Lp, p.Sp, p.Hp
    kv_lo, kv_hi, _, _ = p.ranges(st, bq, bk)
    nq = Lp // bq
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, st=st, block_k=bk),
        grid=(nq, B, N),
        in_specs=[
            _full((B, nq)),
            _full((B, nq)),
            _full((N,)),
            pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, i, n, 0)),
            pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, n // G, 0)),
            pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, n // G, 0)),
            pl.BlockSpec((None, bq), lambda i, b, n: (b, i)),
            pl.BlockSpec((None, bq), lambda i, b, n: (b, i)),
            pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)),
            pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, i, n, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((B, Lp, N, Hp), q.dtype),
            jax.ShapeDtypeStruct((B, N, Lp), jnp.float32),
        ],
        compiler_params=p.compiler_params(bq, bk),
        interpret=st.interpret,
        name="flash_attention_fwd",
    )(kv_lo, kv_hi, p.slopes, p.q, p.k, p.v, p.q_seg, p.q_pos, p.kv_seg, p.kv_pos)
    return out[:, :L, :, :H], lse


def _fwd_kernel(
    lo_ref,
    hi_ref,
    slopes_ref,
    q_ref,
    k_ref,
    v_ref,
    qseg_ref,
    qpos_ref,
    kseg_ref,
    kpos_ref,
    o_ref,
    lse_ref,
    *,
    st: Static,
    block_k: int,
):
    i, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = q_ref[...]
    q_pos, q_seg = qpos_ref[...][:, None], qseg_ref[...][:, None]
    slope = slopes_ref[n] if st.has_alibi else None
    bq, hp = q.shape

    def body(j, carry):
        acc, m, l = carry
        ks = pl.ds(j * block_k, block_k)
        k_pos, k_seg = kpos_ref[ks][None, :], kseg_ref[ks][None, :]
        s, _ = fc.tile_logits(q, k_ref[ks, :], st)
        if st.has_alibi:
            s = s + fc.tile_alibi(slope, q_pos, k_pos)
        visible = fc.tile_visible(q_pos, q_seg, k_pos, k_seg, st)
        s = jnp.where(visible, s, fc.MASK_VALUE)
        m_new = jnp.maximum(m, s.max(axis=1))
        correction = jnp.exp(m - m_new)
        probs = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
        l = correction * l + probs.sum(axis=1)
        v = v_ref[ks, :]
        pv = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return correction[:, None] * acc + pv, m_new, l

    init = (
        jnp.zeros((bq, hp), jnp.float32),
        jnp.full((bq,), fc.MASK_VALUE, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, l = jax.lax.fori_loop(lo_ref[b, i], hi_ref[b, i], body, init)
    # Rows that saw no key (padding, or masked everywhere) give 0, as the reference does.
    l_safe = jnp.where(l == 0.0, 1.0, l)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l_safe)


# ----------------------------------------------------------------------------- backward


def _backward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, out, lse, do):
    p = _Padded(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)
    B, L, N, H, S, K = p.shape
    G, bq, bk, Lp, Sp, Hp = N // K, p.bq_bwd, p.bk_bwd, p.Lp, p.Sp, p.Hp
    kv_lo, kv_hi, q_lo, q_hi = p.ranges(st, bq, bk)
    # delta_i = sum_h o_ih do_ih: the softmax-backward row term, one cheap elementwise pass.
    delta = jnp.einsum("BLNH,BLNH->BNL", out.astype(jnp.float32), do.astype(jnp.float32))
    delta = fc.pad_axis(delta, 2, Lp)
    do_p = p.pad_q(do.astype(q.dtype))
    nq, nk = Lp // bq, Sp // bk
    row = pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, i, n, 0))
    kv_whole = pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, n // G, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st, block_k=bk),
        grid=(nq, B, N),
        in_specs=[
            _full((B, nq)),
            _full((B, nq)),
            _full((N,)),
            row,
            kv_whole,
            kv_whole,
            row,
            pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i)),
            pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i)),
            pl.BlockSpec((None, bq), lambda i, b, n: (b, i)),
            pl.BlockSpec((None, bq), lambda i, b, n: (b, i)),
            pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)),
            pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)),
        ],
        out_specs=row,
        out_shape=jax.ShapeDtypeStruct((B, Lp, N, Hp), q.dtype),
        compiler_params=p.compiler_params(bq, bk),
        interpret=st.interpret,
        name="flash_attention_dq",
    )(kv_lo, kv_hi, p.slopes, p.q, p.k, p.v, do_p, lse, delta, p.q_seg, p.q_pos, p.kv_seg, p.kv_pos)

    kv_row = pl.BlockSpec((None, bk, None, Hp), lambda j, b, h: (b, j, h, 0))
    q_group = pl.BlockSpec((None, Lp, G, Hp), lambda j, b, h: (b, 0, h, 0))
    stat_group = pl.BlockSpec((None, G, Lp), lambda j, b, h: (b, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, block_q=bq, group=G),
        grid=(nk, B, K),
        in_specs=[
            _full((B, nk)),
            _full((B, nk)),
            _full((N,)),
            q_group,
            kv_row,
            kv_row,
            q_group,
            stat_group,
            stat_group,
            pl.BlockSpec((None, Lp), lambda j, b, h: (b, 0)),
            pl.BlockSpec((None, Lp), lambda j, b, h: (b, 0)),
            pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
            pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
        ],
        out_specs=[kv_row, kv_row],
        out_shape=[jax.ShapeDtypeStruct((B, Sp, K, Hp), k.dtype)] * 2,
        compiler_params=p.compiler_params(bq, bk),
        interpret=st.interpret,
        name="flash_attention_dkv",
    )(q_lo, q_hi, p.slopes, p.q, p.k, p.v, do_p, lse, delta, p.q_seg, p.q_pos, p.kv_seg, p.kv_pos)
    return dq[:, :L, :, :H], dk[:, :S, :, :H], dv[:, :S, :, :H]


def _dq_kernel(
    lo_ref,
    hi_ref,
    slopes_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    qseg_ref,
    qpos_ref,
    kseg_ref,
    kpos_ref,
    dq_ref,
    *,
    st: Static,
    block_k: int,
):
    i, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos, q_seg = qpos_ref[...][:, None], qseg_ref[...][:, None]
    slope = slopes_ref[n] if st.has_alibi else None

    def body(j, dq):
        ks = pl.ds(j * block_k, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        k_pos, k_seg = kpos_ref[ks][None, :], kseg_ref[ks][None, :]
        probs, t = fc.tile_probs(q, k, q_pos, q_seg, k_pos, k_seg, slope, lse, st)
        dp = jax.lax.dot_general(do, v, fc.NT_DIMS, preferred_element_type=jnp.float32)
        ds = fc.tile_dlogits(probs, dp, delta, t, st)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    dq = jax.lax.fori_loop(lo_ref[b, i], hi_ref[b, i], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(
    lo_ref,
    hi_ref,
    slopes_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    qseg_ref,
    qpos_ref,
    kseg_ref,
    kpos_ref,
    dk_ref,
    dv_ref,
    *,
    st: Static,
    block_q: int,
    group: int,
):
    j, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    k_pos, k_seg = kpos_ref[...][None, :], kseg_ref[...][None, :]
    lo, hi = lo_ref[b, j], hi_ref[b, j]

    def head(g, carry):
        slope = slopes_ref[h * group + g] if st.has_alibi else None

        def body(i, carry):
            dk, dv = carry
            qs = pl.ds(i * block_q, block_q)
            q, do = q_ref[qs, g, :], do_ref[qs, g, :]
            lse, delta = lse_ref[g, qs][:, None], delta_ref[g, qs][:, None]
            q_pos, q_seg = qpos_ref[qs][:, None], qseg_ref[qs][:, None]
            probs, t = fc.tile_probs(q, k, q_pos, q_seg, k_pos, k_seg, slope, lse, st)
            dv = dv + jax.lax.dot_general(
                probs.astype(do.dtype), do, fc.TN_DIMS, preferred_element_type=jnp.float32
            )
            dp = jax.lax.dot_general(do, v, fc.NT_DIMS, preferred_element_type=jnp.float32)
            ds = fc.tile_dlogits(probs, dp, delta, t, st)
            dk = dk + jax.lax.dot_general(
                ds.astype(q.dtype), q, fc.TN_DIMS, preferred_element_type=jnp.float32
            )
            return dk, dv

        return jax.lax.fori_loop(lo, hi, body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

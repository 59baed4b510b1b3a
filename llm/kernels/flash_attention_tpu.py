"""Flash attention for TPUs in Pallas (Mosaic lowering), forward and backward.

Same algorithm and tile math as `flash_attention_gpu.py` (FlashAttention-2, Dao, 2023,
arXiv:2307.08691), walked the TPU way: the key loop is the innermost *grid* axis
("arbitrary"), so Pallas double-buffers the K/V block DMAs, and the running max, sum and
output live in VMEM scratch across grid steps. Fully masked blocks are skipped twice over: the
body is predicated off (`pl.when`) and the K/V index map is clamped to the live range
(scalar-prefetched `block_ranges`), so a skipped step re-uses the resident block and issues no
DMA. dk/dv: one program row per (kv head, key block), grid steps over the G query heads of
the group and their query blocks, so GQA never repeats K/V.

Mosaic tiling rules shape the layout: heads move in front ([B, N, L, H]) so a block's last two
dims are (rows, head_dim); query positions/segment ids are [B, L, 1] (column vectors), key
ones [B, 1, S] (row vectors, blocks a multiple of the 128 lanes); running max/sum are
lane-replicated (rows, 128) as Mosaic prefers.

`interpret=True` runs the kernels through Pallas' interpreter on any backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from llm.kernels import flash_common as fc
from llm.kernels.flash_common import BlockSizes, Static, flash_attention_reference
from llm.typing import Array

__all__ = ["DEFAULT_BLOCKS", "flash_attention", "flash_attention_reference"]

# Large tiles amortise the ~0.35 us per grid step; 512x512 f32 logits are 1 MiB of VMEM.
# Not tuned on hardware here (no TPU on CI).
DEFAULT_BLOCKS = BlockSizes(block_q=512, block_k=512, block_q_bwd=256, block_k_bwd=256)
SUBLANES, LANES = 8, 128


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
    fc.check_inputs(q_BLNH, k_BSKH, v_BSKH, "flash_attention_tpu")
    blocks = block_sizes or DEFAULT_BLOCKS
    for name in ("block_k", "block_k_bwd"):
        if getattr(blocks, name) < LANES:
            raise ValueError(f"{name}={getattr(blocks, name)} must be >= {LANES} on TPU (lanes)")
    st = Static(
        causal=causal,
        sliding_window=sliding_window,
        softcap=softcap,
        scale=q_BLNH.shape[-1] ** -0.5,
        has_alibi=alibi_slopes_N is not None,
        blocks=blocks,
        interpret=interpret,
    )
    ids = (q_segment_ids_BL, kv_segment_ids_BS, q_positions_BL, kv_positions_BS)
    fc.check_features(ids, q_BLNH, k_BSKH, sliding_window, softcap, "flash_attention_tpu")
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
    """Heads-major, block-padded inputs; block sizes clamped for short sequences."""

    def __init__(self, st: Static, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
        B, L, N, H = q.shape
        S, K = k.shape[1], k.shape[2]
        b = st.blocks
        self.shape = (B, L, N, H, S, K)
        self.bq = fc.clamp_block(b.block_q, L, SUBLANES)
        self.bk = fc.clamp_block(b.block_k, S, LANES)
        self.bq_bwd = fc.clamp_block(b.block_q_bwd, L, SUBLANES)
        self.bk_bwd = fc.clamp_block(b.block_k_bwd, S, LANES)
        self.Lp = fc.round_up(L, max(self.bq, self.bq_bwd))
        self.Sp = fc.round_up(S, max(self.bk, self.bk_bwd))
        self.q = self.heads_major(q, self.Lp)
        self.k, self.v = (self.heads_major(x, self.Sp) for x in (k, v))
        self.q_seg, self.q_pos = (fc.pad_axis(x, 1, self.Lp)[:, :, None] for x in (q_seg, q_pos))
        self.kv_seg, self.kv_pos = (fc.pad_axis(x, 1, self.Sp)[:, None] for x in (kv_seg, kv_pos))
        slopes = jnp.zeros((N,), jnp.float32) if slopes is None else slopes
        self.slopes = slopes.astype(jnp.float32)

    @staticmethod
    def heads_major(x_BLNH, length):
        return jnp.swapaxes(fc.pad_axis(x_BLNH, 1, length), 1, 2)

    def ranges(self, st: Static, bq: int, bk: int):
        return fc.block_ranges(
            self.q_seg[:, :, 0],
            self.kv_seg[:, 0],
            self.q_pos[:, :, 0],
            self.kv_pos[:, 0],
            bq,
            bk,
            causal=st.causal,
            sliding_window=st.sliding_window,
        )


def _live(lo_ref, hi_ref, b, i, step):
    """Block index for grid step `step` of row (b, i): lo + step, clamped into [lo, hi)."""
    lo, hi = lo_ref[b, i], hi_ref[b, i]
    return lo + jnp.minimum(step, jnp.maximum(hi - lo - 1, 0))


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


# ----------------------------------------------------------------------------- forward


def _forward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes):
    p = _Padded(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)
    B, L, N, H, _, K = p.shape
    G, bq, bk, Lp, Sp = N // K, p.bq, p.bk, p.Lp, p.Sp
    kv_lo, kv_hi, _, _ = p.ranges(st, bq, bk)

    def kv_map(b, n, i, j, lo, hi, _):
        return b, jax.lax.div(n, G), _live(lo, hi, b, i, j), 0

    def kv_ids_map(b, n, i, j, lo, hi, _):
        return b, 0, _live(lo, hi, b, i, j)

    q_spec = pl.BlockSpec((None, None, bq, H), lambda b, n, i, j, *_: (b, n, i, 0))
    col_spec = pl.BlockSpec((None, bq, 1), lambda b, n, i, j, *_: (b, i, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(B, N, Lp // bq, Sp // bk),
        in_specs=[
            q_spec,
            pl.BlockSpec((None, None, bk, H), kv_map),
            pl.BlockSpec((None, None, bk, H), kv_map),
            col_spec,
            col_spec,
            pl.BlockSpec((None, 1, bk), kv_ids_map),
            pl.BlockSpec((None, 1, bk), kv_ids_map),
        ],
        out_specs=[
            q_spec,
            pl.BlockSpec((None, None, bq, 1), lambda b, n, i, j, *_: (b, n, i, 0)),
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, H), jnp.float32),
        ],
    )
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, st=st),
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((B, N, Lp, H), q.dtype),
            jax.ShapeDtypeStruct((B, N, Lp, 1), jnp.float32),
        ],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=st.interpret,
        name="flash_attention_fwd_tpu",
    )(kv_lo, kv_hi, p.slopes, p.q, p.k, p.v, p.q_seg, p.q_pos, p.kv_seg, p.kv_pos)
    return jnp.swapaxes(out, 1, 2)[:, :L], lse


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
    m_sc,
    l_sc,
    acc_sc,
    *,
    st: Static,
):
    b, n, i, j = (pl.program_id(a) for a in range(4))
    lo, hi = lo_ref[b, i], hi_ref[b, i]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, fc.MASK_VALUE, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(lo + j < hi)
    def _step():
        q_pos, q_seg, k_pos, k_seg = qpos_ref[...], qseg_ref[...], kpos_ref[...], kseg_ref[...]
        s, _ = fc.tile_logits(q_ref[...], k_ref[...], st)
        if st.has_alibi:
            s = s + fc.tile_alibi(slopes_ref[n], q_pos, k_pos)
        visible = fc.tile_visible(q_pos, q_seg, k_pos, k_seg, st)
        s = jnp.where(visible, s, fc.MASK_VALUE)
        m_prev = m_sc[...]
        m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
        correction = jnp.exp(m_prev - m_new)
        probs = jnp.where(visible, jnp.exp(s - m_new[:, :1]), 0.0)
        l_sc[...] = correction * l_sc[...] + probs.sum(axis=1, keepdims=True)
        m_sc[...] = m_new
        v = v_ref[...]
        pv = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc_sc[...] = correction[:, :1] * acc_sc[...] + pv

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l = l_sc[...][:, :1]
        l_safe = jnp.where(l == 0.0, 1.0, l)
        o_ref[...] = (acc_sc[...] / l_safe).astype(o_ref.dtype)
        lse_ref[...] = m_sc[...][:, :1] + jnp.log(l_safe)


# ----------------------------------------------------------------------------- backward


def _backward(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes, out, lse, do):
    p = _Padded(st, q, k, v, q_seg, kv_seg, q_pos, kv_pos, slopes)
    _, L, N, _, S, K = p.shape
    G, bq, bk, Lp = N // K, p.bq_bwd, p.bk_bwd, p.Lp
    kv_lo, kv_hi, q_lo, q_hi = p.ranges(st, bq, bk)
    # delta_i = sum_h o_ih do_ih: the softmax-backward row term, one cheap elementwise pass.
    delta = jnp.einsum("BLNH,BLNH->BNL", out.astype(jnp.float32), do.astype(jnp.float32))
    delta = fc.pad_axis(delta, 2, Lp)[..., None]
    do_p = p.heads_major(do.astype(q.dtype), Lp)
    args = (p.slopes, p.q, p.k, p.v, do_p, lse, delta, p.q_seg, p.q_pos, p.kv_seg, p.kv_pos)
    dq = _dq_call(st, p, bq, bk, G)(kv_lo, kv_hi, *args)
    dk, dv = _dkv_call(st, p, bq, bk, G)(q_lo, q_hi, *args)
    back = lambda x, n: jnp.swapaxes(x, 1, 2)[:, :n]  # noqa: E731
    return back(dq, L), back(dk, S), back(dv, S)


def _dq_call(st, p: _Padded, bq: int, bk: int, G: int):
    B, _, N, H, _, _ = p.shape

    def kv_map(b, n, i, j, lo, hi, _):
        return b, jax.lax.div(n, G), _live(lo, hi, b, i, j), 0

    def kv_ids_map(b, n, i, j, lo, hi, _):
        return b, 0, _live(lo, hi, b, i, j)

    row = pl.BlockSpec((None, None, bq, H), lambda b, n, i, j, *_: (b, n, i, 0))
    stat = pl.BlockSpec((None, None, bq, 1), lambda b, n, i, j, *_: (b, n, i, 0))
    col = pl.BlockSpec((None, bq, 1), lambda b, n, i, j, *_: (b, i, 0))
    kv = pl.BlockSpec((None, None, bk, H), kv_map)
    kv_ids = pl.BlockSpec((None, 1, bk), kv_ids_map)
    return pl.pallas_call(
        functools.partial(_dq_kernel, st=st),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(B, N, p.Lp // bq, p.Sp // bk),
            in_specs=[row, kv, kv, row, stat, stat, col, col, kv_ids, kv_ids],
            out_specs=row,
            scratch_shapes=[pltpu.VMEM((bq, H), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct((B, N, p.Lp, H), p.q.dtype),
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=st.interpret,
        name="flash_attention_dq_tpu",
    )


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
    dq_sc,
    *,
    st: Static,
):
    b, n, i, j = (pl.program_id(a) for a in range(4))

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when(lo_ref[b, i] + j < hi_ref[b, i])
    def _step():
        k = k_ref[...]
        slope = slopes_ref[n] if st.has_alibi else None
        probs, t = fc.tile_probs(
            q_ref[...],
            k,
            qpos_ref[...],
            qseg_ref[...],
            kpos_ref[...],
            kseg_ref[...],
            slope,
            lse_ref[...],
            st,
        )
        dp = jax.lax.dot_general(
            do_ref[...], v_ref[...], fc.NT_DIMS, preferred_element_type=jnp.float32
        )
        ds = fc.tile_dlogits(probs, dp, delta_ref[...], t, st)
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_call(st, p: _Padded, bq: int, bk: int, G: int):
    B, _, _, H, _, K = p.shape

    def q_map(b, h, j, g, i, lo, hi, _):
        return b, h * G + g, _live(lo, hi, b, j, i), 0

    def q_ids_map(b, h, j, g, i, lo, hi, _):
        return b, _live(lo, hi, b, j, i), 0

    row = pl.BlockSpec((None, None, bq, H), q_map)
    stat = pl.BlockSpec((None, None, bq, 1), q_map)
    col = pl.BlockSpec((None, bq, 1), q_ids_map)
    kv = pl.BlockSpec((None, None, bk, H), lambda b, h, j, g, i, *_: (b, h, j, 0))
    kv_ids = pl.BlockSpec((None, 1, bk), lambda b, h, j, g, i, *_: (b, 0, j))
    return pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, group=G),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(B, K, p.Sp // bk, G, p.Lp // bq),
            in_specs=[row, kv, kv, row, stat, stat, col, col, kv_ids, kv_ids],
            out_specs=[kv, kv],
            scratch_shapes=[pltpu.VMEM((bk, H), jnp.float32)] * 2,
        ),
        out_shape=[jax.ShapeDtypeStruct((B, K, p.Sp, H), p.k.dtype)] * 2,
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=st.interpret,
        name="flash_attention_dkv_tpu",
    )


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
    dk_sc,
    dv_sc,
    *,
    st: Static,
    group: int,
):
    b, h, j, g, i = (pl.program_id(a) for a in range(5))

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when(lo_ref[b, j] + i < hi_ref[b, j])
    def _step():
        q, do = q_ref[...], do_ref[...]
        slope = slopes_ref[h * group + g] if st.has_alibi else None
        probs, t = fc.tile_probs(
            q,
            k_ref[...],
            qpos_ref[...],
            qseg_ref[...],
            kpos_ref[...],
            kseg_ref[...],
            slope,
            lse_ref[...],
            st,
        )
        dv_sc[...] += jnp.dot(probs.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dp = jax.lax.dot_general(do, v_ref[...], fc.NT_DIMS, preferred_element_type=jnp.float32)
        ds = fc.tile_dlogits(probs, dp, delta_ref[...], t, st)
        dk_sc[...] += jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

    @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
    def _finish():
        dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)

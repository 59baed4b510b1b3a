"""What every flash-attention kernel shares: block sizes, padding, block ranges, tile math.

The kernels (`flash_attention_gpu.py`, `flash_attention_tpu.py`) differ in how they walk the
tiles; what a tile *computes* is the same and lives here, so the two cannot drift apart:

* `tile_logits` / `tile_visible` / `tile_alibi`: logits of one (query block, key block) tile,
  with the mask rule of `llm/ops/masks.py` evaluated from positions and segment ids.
* `block_ranges`: for every query block, the contiguous range of key blocks that can hold a
  visible key (and the converse), from per-block min/max of positions and segment ids. Kernels
  loop over that range only, so causal, sliding-window and packed-padding blocks that are fully
  masked are never loaded or multiplied (FlashAttention-2, Dao 2023, arXiv:2307.08691, sec. 3.1).
* `flash_attention_reference`: the plain jnp reference the kernels are tested against; it is
  `llm/ops/masks.py` + `llm/ops/attention_xla.py`, so mask semantics match by construction.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llm.ops import masks
from llm.ops.attention_xla import attention_reference
from llm.typing import Array

# Finite "minus infinity": exp(MASK_VALUE - m) underflows to 0 without inf - inf = nan.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
TN_DIMS = (((0,), (0,)), ((), ()))  # a.T @ b


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (tokens); powers of two. See docs/kernels.md for what each trades."""

    block_q: int = 128  # query rows per forward program (rows of the output tile)
    block_k: int = 64  # key rows per forward inner step
    block_q_bwd: int = 64  # query rows per dq program and per dk/dv inner step
    block_k_bwd: int = 64  # key rows per dk/dv program and per dq inner step

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
            value = getattr(self, name)
            if not _is_power_of_two(value) or value < 8:
                raise ValueError(f"{name}={value} must be a power of two >= 8")


@dataclasses.dataclass(frozen=True)
class Static:
    """Compile-time settings of one attention call (hashable: a custom_vjp nondiff arg)."""

    causal: bool
    sliding_window: int | None
    softcap: float | None
    scale: float  # softmax scale, head_dim ** -0.5 of the *unpadded* head dim
    has_alibi: bool
    blocks: BlockSizes
    interpret: bool


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def clamp_block(block: int, length: int, minimum: int) -> int:
    """Shrink a block for short sequences (no 128-row tile for 5 tokens); stays a power of 2."""
    need = max(minimum, 1 << max(length - 1, 0).bit_length())
    return min(block, need)


def pad_axis(x: Array, axis: int, length: int, value: int | float = 0) -> Array:
    """Pad `axis` of x up to `length` with `value` (no-op when already that long)."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def block_ranges(
    q_segment_ids_BL: Array,
    kv_segment_ids_BS: Array,
    q_positions_BL: Array,
    kv_positions_BS: Array,
    block_q: int,
    block_k: int,
    *,
    causal: bool,
    sliding_window: int | None,
) -> tuple[Array, Array, Array, Array]:
    """Key-block range [lo, hi) per query block, and query-block range per key block.

    A (query block, key block) pair is *live* unless the min/max of its positions and segment
    ids prove every pair masked. Returns int32 (kv_lo_BI, kv_hi_BI, q_lo_BJ, q_hi_BJ); an empty
    range is lo = hi = 0. Lengths must already be multiples of the block sizes.
    """
    B = q_segment_ids_BL.shape[0]
    BIG = 1 << 29

    def stats(x, seg, block):
        # Over non-padding tokens only (segment 0 neither sees nor is seen): an all-padding
        # block gets (BIG, -BIG), which fails every overlap test below. BIG = 2^29 keeps the
        # differences inside int32.
        x, real = x.reshape(B, -1, block), seg.reshape(B, -1, block) != 0
        return jnp.where(real, x, BIG).min(-1), jnp.where(real, x, -BIG).max(-1)

    qs_lo, qs_hi = stats(q_segment_ids_BL, q_segment_ids_BL, block_q)
    ks_lo, ks_hi = stats(kv_segment_ids_BS, kv_segment_ids_BS, block_k)
    qp_lo, qp_hi = stats(q_positions_BL, q_segment_ids_BL, block_q)
    kp_lo, kp_hi = stats(kv_positions_BS, kv_segment_ids_BS, block_k)
    live_BIJ = jnp.maximum(qs_lo[:, :, None], ks_lo[:, None, :]) <= jnp.minimum(
        qs_hi[:, :, None], ks_hi[:, None, :]
    )
    if causal:
        live_BIJ &= kp_lo[:, None, :] <= qp_hi[:, :, None]
    if sliding_window is not None:
        live_BIJ &= qp_lo[:, :, None] - kp_hi[:, None, :] < sliding_window
    kv_lo, kv_hi = _first_and_end(live_BIJ)
    q_lo, q_hi = _first_and_end(jnp.swapaxes(live_BIJ, 1, 2))
    return kv_lo, kv_hi, q_lo, q_hi


def _first_and_end(live_XY: Array) -> tuple[Array, Array]:
    n = live_XY.shape[-1]
    any_X = live_XY.any(-1)
    first = jnp.argmax(live_XY, axis=-1)
    end = n - jnp.argmax(live_XY[..., ::-1], axis=-1)
    return (
        jnp.where(any_X, first, 0).astype(jnp.int32),
        jnp.where(any_X, end, 0).astype(jnp.int32),
    )


# ----------------------------------------------------------------------------- tile math
# Used inside kernels: 2-D arrays only, positions/segment ids as (rows, 1) and (1, cols).


def tile_logits(q_QH: Array, k_KH: Array, st: Static) -> tuple[Array, Array | None]:
    """Scaled (and soft-capped) f32 logits; also tanh(.) for the soft-cap derivative."""
    s_QK = jax.lax.dot_general(q_QH, k_KH, NT_DIMS, preferred_element_type=jnp.float32)
    s_QK = s_QK * st.scale
    if st.softcap is None:
        return s_QK, None
    t_QK = jnp.tanh(s_QK / st.softcap)
    return st.softcap * t_QK, t_QK


def tile_visible(q_pos, q_seg, k_pos, k_seg, st: Static) -> Array:
    """The rule of masks.attention_mask for one tile (bool [Q, K])."""
    visible = (q_seg == k_seg) & (k_seg != 0)
    if st.causal:
        visible &= k_pos <= q_pos
    if st.sliding_window is not None:
        visible &= q_pos - k_pos < st.sliding_window
    return visible


def tile_alibi(slope, q_pos, k_pos) -> Array:
    """ALiBi bias -slope * |pos_q - pos_k| (Press et al., 2022, arXiv:2108.12409)."""
    delta = q_pos - k_pos
    # max(d, -d), not abs(d): Mosaic lowers integer abs through sign(), which needs a live TPU.
    return -slope * jnp.maximum(delta, -delta).astype(jnp.float32)


def tile_probs(q_QH, k_KH, q_pos, q_seg, k_pos, k_seg, slope, lse_Q1, st: Static):
    """Backward recompute: probabilities p = exp(s - lse) (0 where masked) and tanh(.)."""
    s_QK, t_QK = tile_logits(q_QH, k_KH, st)
    if st.has_alibi:
        s_QK = s_QK + tile_alibi(slope, q_pos, k_pos)
    visible = tile_visible(q_pos, q_seg, k_pos, k_seg, st)
    return jnp.where(visible, jnp.exp(s_QK - lse_Q1), 0.0), t_QK


def tile_dlogits(p_QK, dp_QK, delta_Q1, t_QK, st: Static) -> Array:
    """d loss / d (q k^T): softmax backward, then through the soft cap and the scale."""
    ds_QK = p_QK * (dp_QK - delta_Q1)
    if t_QK is not None:
        ds_QK = ds_QK * (1.0 - t_QK * t_QK)
    return ds_QK * st.scale


def check_inputs(q_BLNH: Array, k_BSKH: Array, v_BSKH: Array, where: str) -> None:
    """Shape/dtype checks shared by every kernel entry point; errors name the kernel."""
    if q_BLNH.ndim != 4 or k_BSKH.ndim != 4 or k_BSKH.shape != v_BSKH.shape:
        raise ValueError(
            f"{where}: expected q [B, L, N, H] and k, v [B, S, K, H] of equal shape; got "
            f"{q_BLNH.shape=}, {k_BSKH.shape=}, {v_BSKH.shape=}"
        )
    N, K = q_BLNH.shape[2], k_BSKH.shape[2]
    if N % K or q_BLNH.shape[3] != k_BSKH.shape[3] or q_BLNH.shape[0] != k_BSKH.shape[0]:
        raise ValueError(
            f"{where}: query heads {N=} must be a multiple of kv heads {K=}, with equal batch "
            f"and head dim; got {q_BLNH.shape=}, {k_BSKH.shape=}"
        )
    if not (q_BLNH.dtype == k_BSKH.dtype == v_BSKH.dtype):
        raise ValueError(
            f"{where}: q, k, v must share a dtype; got {q_BLNH.dtype}, {k_BSKH.dtype}, "
            f"{v_BSKH.dtype}"
        )
    if q_BLNH.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"{where}: dtype {q_BLNH.dtype} unsupported; use float32 or bfloat16")


def check_features(ids, q_BLNH, k_BSKH, sliding_window, softcap, where: str) -> None:
    """Segment ids / positions shaped [B, L] and [B, S]; window and soft-cap positive."""
    B, L = q_BLNH.shape[:2]
    S = k_BSKH.shape[1]
    names = ("q_segment_ids", "kv_segment_ids", "q_positions", "kv_positions")
    for name, x, want in zip(names, ids, ((B, L), (B, S), (B, L), (B, S)), strict=True):
        if x.shape != want:
            raise ValueError(f"{where}: {name} must have shape {want}, got {x.shape}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"{where}: {sliding_window=} must be >= 1 (or None)")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"{where}: {softcap=} must be > 0 (or None)")


def flash_attention_reference(
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
) -> Array:
    """Plain jnp attention with the kernels' signature: masks.py + attention_xla.py."""
    mask_BLS = masks.attention_mask(
        q_segment_ids_BL,
        kv_segment_ids_BS,
        q_positions_BL,
        kv_positions_BS,
        causal=causal,
        sliding_window=sliding_window,
    )
    bias_BNLS = None
    if alibi_slopes_N is not None:
        bias_BNLS = masks.alibi_bias(alibi_slopes_N, q_positions_BL, kv_positions_BS)
    return attention_reference(
        q_BLNH, k_BSKH, v_BSKH, mask_BLS, bias_BNLS=bias_BNLS, softcap=softcap
    )

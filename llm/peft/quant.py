"""Block-wise weight quantisation for a frozen base: NF4 and int8, with plain references.

    q = quantize(w, "nf4", block_size=64)   # {"nf4": uint8 [..., n/2], "scales": [..., n/64]}
    w_again = dequantize(q)                  # w's shape, in the scales' dtype (w's dtype)

Design:
- Blocks run along the *last* axis: a weight [..., n] is cut into n / block_size blocks of
  consecutive values, each with its own absmax scale. For a row-major weight whose last axis is
  a multiple of the block this is the same blocking as bitsandbytes' (which blocks the
  flattened tensor), and every other axis keeps its size, so the codes and scales keep the
  weight's logical axes (llm/peft/qlora.py) and shard like it.
- NF4, NormalFloat4 (Dettmers et al. 2023, QLoRA, arXiv:2305.14314, sec. 3): 16 levels at
  quantiles of N(0, 1), normalised to [-1, 1], with an exact zero. The levels are derived
  as the paper does (`nf4_levels`, in llm/ops/quantized.py with the packing); a value x in a
  block with absmax a gets the code of the level nearest x / a, and two 4-bit codes share a
  uint8 (the first in the high nibble, as bitsandbytes packs them).
- int8: symmetric absmax (Dettmers et al. 2022, LLM.int8(), arXiv:2208.07339, sec. 2):
  code = round(127 x / a), an int8 in [-127, 127].
- A quantised weight is a dict {format: codes, "scales": absmax per block}; the key names the
  format, so `dequantize` needs no config and works under jit. The scales keep the weight's
  dtype, which is the dtype `dequantize` returns.
- A block whose absmax is 0 quantises to the zero level and comes back as exact zeros.

Error bounds (before float rounding of the final multiply): int8 within a / 254 of x; NF4
within a * max_gap / 2, max_gap the largest distance between adjacent levels (-1 to -0.696).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llm.ops.quantized import (  # noqa: F401 (re-exported: the NF4 levels and packing live there)
    NF4_LEVELS,
    nf4_levels,
    pack_nibbles,
    unpack_nibbles,
)

FORMATS = ("nf4", "int8")
SCALES = "scales"
INT8_MAX = 127
INT8_STEP = np.float32(1 / INT8_MAX)  # dequantised value of code 1 (a multiply, not a divide)


NF4_ZERO = int(np.flatnonzero(NF4_LEVELS == 0)[0])  # the code of the exact zero (7)
NF4_MAX_GAP = float(np.max(np.diff(NF4_LEVELS)))  # largest distance between adjacent levels


def _check(x_shape: tuple[int, ...], fmt: str, block_size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"quantize: unknown format {fmt!r}; choose one of {FORMATS}")
    if block_size < 1 or (fmt == "nf4" and block_size % 2):
        raise ValueError(f"quantize: {block_size=} must be positive (and even for nf4)")
    if not x_shape or x_shape[-1] % block_size:
        raise ValueError(
            f"quantize: the last axis of shape {x_shape} must be a multiple of {block_size=} "
            "(blocks run along the last axis)"
        )


def _blocks(x: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    """x [..., n] as float32 blocks [..., n/block, block] and their absmax [..., n/block]."""
    xb = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    return xb, jnp.max(jnp.abs(xb), axis=-1)


def _normalised(xb: jax.Array, absmax: jax.Array) -> jax.Array:
    """x / absmax per block, zero blocks left at zero (no 0 / 0)."""
    return xb / jnp.where(absmax == 0, 1.0, absmax)[..., None]


def quantize(x: jax.Array, fmt: str, block_size: int = 64) -> dict[str, jax.Array]:
    """{fmt: codes, "scales": absmax per block} of `x` blocked along its last axis (jittable;
    `fmt` and `block_size` are static)."""
    _check(tuple(x.shape), fmt, block_size)
    xb, absmax = _blocks(x, block_size)
    y = _normalised(xb, absmax)
    if fmt == "int8":
        codes = jnp.clip(jnp.round(y * INT8_MAX), -INT8_MAX, INT8_MAX).astype(jnp.int8)
        return {fmt: codes.reshape(x.shape), SCALES: absmax.astype(x.dtype)}
    midpoints = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, y, side="left").astype(jnp.uint8)  # ties: lower level
    return {fmt: pack_nibbles(codes.reshape(x.shape)), SCALES: absmax.astype(x.dtype)}


def format_of(q: dict) -> str:
    """Which format a quantised leaf holds, or ValueError naming what it holds instead."""
    fmts = [f for f in FORMATS if f in q]
    if len(fmts) != 1 or set(q) != {fmts[0], SCALES}:
        raise ValueError(f"not a quantised weight: keys {sorted(q)}, want one of {FORMATS} "
                         f"and {SCALES!r}")  # fmt: skip
    return fmts[0]


def is_quantized(leaf: object) -> bool:
    """A {format: codes, "scales": ...} dict (what `quantize` returns)."""
    return isinstance(leaf, dict) and SCALES in leaf and any(f in leaf for f in FORMATS)


def dequantize(q: dict[str, jax.Array]) -> jax.Array:
    """The weight back from `quantize`'s output, in the scales' dtype (jittable)."""
    fmt, scales = format_of(q), q[SCALES]
    if fmt == "int8":
        values = q[fmt].astype(jnp.float32) * INT8_STEP
    else:
        values = jnp.asarray(NF4_LEVELS)[unpack_nibbles(q[fmt])]
    n = values.shape[-1]
    if scales.shape[:-1] != values.shape[:-1] or n % scales.shape[-1]:
        raise ValueError(f"dequantize: {fmt} codes for shape {values.shape} do not fit scales "
                         f"{scales.shape}")  # fmt: skip
    vb = values.reshape(*values.shape[:-1], scales.shape[-1], n // scales.shape[-1])
    out = vb * scales.astype(jnp.float32)[..., None]
    return out.reshape(values.shape).astype(scales.dtype)


def stored_shapes(shape: tuple[int, ...], fmt: str, block_size: int) -> dict[str, tuple]:
    """The shapes `quantize` gives a weight of `shape` (no arrays; for abstract trees)."""
    _check(tuple(shape), fmt, block_size)
    *lead, n = shape
    return {fmt: (*lead, n // 2 if fmt == "nf4" else n), SCALES: (*lead, n // block_size)}


def bits_per_value(fmt: str, block_size: int, scale_bits: int = 32) -> float:
    """Stored bits per weight value: the code plus its share of the block's scale."""
    return (4 if fmt == "nf4" else 8) + scale_bits / block_size


def quantize_reference(x: np.ndarray, fmt: str, block_size: int = 64) -> dict[str, np.ndarray]:
    """`quantize` written plainly in numpy, one block at a time, in float64: the exact nearest
    code. `quantize` divides in float32 (XLA's vectorised division may be an ulp off), so a
    value within float32 rounding of a decision boundary may get the neighbouring code;
    `boundary_margin` says which values are that close."""
    _check(x.shape, fmt, block_size)
    flat = np.asarray(x, np.float64).reshape(-1, block_size)
    codes = np.zeros(flat.shape, np.int64)
    scales = np.zeros(len(flat), np.float64)
    for i, block in enumerate(flat):
        a = float(np.max(np.abs(block)))
        scales[i] = a
        y = block / a if a else block
        if fmt == "int8":
            codes[i] = np.clip(np.round(y * INT8_MAX), -INT8_MAX, INT8_MAX)
        else:
            codes[i] = [int(np.argmin(np.abs(NF4_LEVELS.astype(np.float64) - v))) for v in y]
    scales = scales.reshape(*x.shape[:-1], x.shape[-1] // block_size).astype(x.dtype)
    codes = codes.reshape(x.shape)
    if fmt == "int8":
        return {fmt: codes.astype(np.int8), SCALES: scales}
    return {fmt: (codes[..., 0::2] << 4 | codes[..., 1::2]).astype(np.uint8), SCALES: scales}


def boundary_margin(x: np.ndarray, fmt: str, block_size: int = 64) -> np.ndarray:
    """|x / absmax - the nearest decision boundary| per value, in float64 (x's shape): for
    int8 the half-steps (k + 1/2) / 127, for NF4 the midpoints between adjacent levels."""
    xb = np.asarray(x, np.float64).reshape(-1, block_size)
    a = np.abs(xb).max(-1, keepdims=True)
    y = xb / np.where(a == 0, 1.0, a)
    if fmt == "int8":
        margin = np.abs(np.abs(y * INT8_MAX) % 1.0 - 0.5) / INT8_MAX
    else:
        levels = NF4_LEVELS.astype(np.float64)
        margin = np.abs(y[..., None] - (levels[1:] + levels[:-1]) / 2).min(-1)
    return margin.reshape(x.shape)


def dequantize_reference(q: dict[str, np.ndarray]) -> np.ndarray:
    """`dequantize` written plainly in numpy."""
    fmt, scales = format_of(q), np.asarray(q[SCALES])
    codes = np.asarray(q[fmt])
    if fmt == "int8":
        values = codes.astype(np.float32) * INT8_STEP
    else:
        both = np.stack([codes >> 4, codes & 0xF], axis=-1).reshape(*codes.shape[:-1], -1)
        values = NF4_LEVELS[both]
    block = values.shape[-1] // scales.shape[-1]
    out = values * np.repeat(scales.astype(np.float32), block, axis=-1)
    return out.astype(scales.dtype)


def max_error(fmt: str) -> float:
    """The largest |x - dequantize(quantize(x))| / absmax of x's block, in exact arithmetic."""
    return 0.5 / INT8_MAX if fmt == "int8" else NF4_MAX_GAP / 2

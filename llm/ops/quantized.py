"""Quantized weights the forward pass consumes directly: `QArray`, a pytree of codes and scales.

    q = quantize(w_KN, fmt="int4", bits=4, group=128, n_in=1, n_out=1)   # round to nearest
    y_MN = matmul(x_MK, q)          # what `Linear` runs when its weight is a QArray
    w_again = dequantize(q)         # w's shape, in q.dtype

Design:
- A weight of logical shape (*lead, *in_dims, *out_dims) is read as one matrix [K, N] per lead
  index (K = prod(in_dims), the contracted input features; N = prod(out_dims)), the view our
  `Linear` multiplies by. Lead axes are a stacked layers axis (the scan slices it away, which is
  why the layout is counted from the end: `n_in`, `n_out` stay true for every slice) or, for the
  token embedding [V, D] (n_in 1, n_out 0), the vocabulary, so a lookup takes rows of codes.
- Groups run along K: every output column has its own scale per `group` input features (GPTQ,
  Frantar et al. 2022, arXiv:2210.17323; AWQ, Lin et al. 2023, arXiv:2306.00978; and GGUF's
  Q8_0 / Q4_0 / Q4_1 blocks of 32, which run along a row of llama.cpp's [out, in] weights).
  group == K is one scale per output channel. Scales: (*lead, K // group, *out_dims).
- Formats, by how a code c decodes (s the group's scale):
    int8   c * s, c in [-127, 127]               absmax / 127 (LLM.int8, arXiv:2208.07339)
    int4   c * s, c in [-2^(b-1), 2^(b-1) - 1]   symmetric b-bit (b = 4, 3 or 2); Q4_0 is b = 4
    uint4  c * s + offset, c in [0, 2^b - 1]      asymmetric: s = (max - min) / (2^b - 1),
                                                  offset = min; GGUF's Q4_1 exactly
    nf4    NF4_LEVELS[c] * s, s = absmax          NormalFloat4 (QLoRA, arXiv:2305.14314, sec. 3)
  Codes of the 4-bit formats (3 and 2 bits included, which then save no memory over 4) are
  stored as `c - lo` in nibbles, two per uint8 along the last axis, the first in the high nibble.
- `act_bits=8` (SmoothQuant's W8A8, arXiv:2211.10438) makes `matmul` quantize each activation
  row to int8 (absmax per token) and multiply int8 by int8 into int32.
- The static fields ride the pytree definition, so a jitted function sees them as constants,
  and an abstract tree (`ShapeDtypeStruct` children) describes a checkpoint to restore.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

from llm.typing import Array

FORMATS = ("int8", "int4", "uint4", "nf4")
NIBBLE_FORMATS = ("int4", "uint4", "nf4")


def nf4_levels() -> np.ndarray:
    """The 16 NF4 levels, ascending, in float32 (QLoRA sec. 3, "4-bit NormalFloat").

    The paper takes quantiles of N(0, 1) at evenly spaced probabilities, separately for the
    negative half (2^3 = 8 levels with the zero) and the positive half (2^3 + 1 = 9 with the
    zero) so that 0 is represented exactly, drops the duplicated zero and scales the levels to
    [-1, 1]. The outermost probability is the mean of 1 - 1/(2*15) and 1 - 1/(2*16), which
    keeps the extreme quantiles finite (bitsandbytes' `create_normal_map`, offset 0.9677)."""
    offset = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
    inv = NormalDist().inv_cdf
    positive = [inv(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    negative = [-inv(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.sort(np.array([*positive, 0.0, *negative]))
    return (levels / np.abs(levels).max()).astype(np.float32)


NF4_LEVELS = nf4_levels()


def pack_nibbles(codes: Array) -> Array:
    """uint8 codes in [0, 16) [..., n] -> uint8 [..., n/2], element 2i in the high nibble."""
    pairs = codes.astype(jnp.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]


def unpack_nibbles(packed: Array) -> Array:
    """The inverse of `pack_nibbles`: uint8 [..., m] -> codes uint8 [..., 2m]."""
    pairs = jnp.stack([packed >> 4, packed & 0xF], axis=-1)
    return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _static(**kw):
    return dataclasses.field(metadata=dict(static=True), **kw)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A quantized weight: `codes`, `scales`, `offsets` are pytree children, the rest static."""

    codes: Array  # int8 (int8), else uint8 nibble pairs along the last axis
    scales: Array  # float (*lead, K // group, *out_dims)
    offsets: Array | None  # uint4: like scales (the group minimum); else None
    fmt: str = _static()  # one of FORMATS
    bits: int = _static()  # bits per code: 8 (int8), 2-4 (int4 / uint4), 4 (nf4)
    group: int = _static()  # input features per scale
    n_in: int = _static()  # contracted axes, after the lead axes
    n_out: int = _static()  # output axes, last
    dtype: str = _static()  # what dequantize returns
    act_bits: int | None = _static(default=None)  # 8: W8A8 (activations quantized per token)

    @property
    def shape(self) -> tuple[int, ...]:
        *rest, last = self.codes.shape
        return (*rest, last * 2 if self.fmt in NIBBLE_FORMATS else last)

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.shape[: len(self.shape) - self.n_in - self.n_out]

    @property
    def K(self) -> int:
        return math.prod(self.shape[len(self.lead_shape) : len(self.shape) - self.n_out])

    @property
    def N(self) -> int:
        return math.prod(self.shape[len(self.shape) - self.n_out :])

    @property
    def out_dims(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.n_out :]


def is_qarray(x: object) -> bool:
    return isinstance(x, QArray)


def code_range(fmt: str, bits: int) -> tuple[int, int]:
    """(lowest, highest) integer code of a format at `bits`; ValueError for a bad pair."""
    ok = {"int8": (8,), "int4": (2, 3, 4), "uint4": (2, 3, 4), "nf4": (4,)}
    if fmt not in ok:
        raise ValueError(f"quantize: unknown format {fmt!r}; choose one of {FORMATS}")
    if bits not in ok[fmt]:
        raise ValueError(f"quantize: format {fmt} takes bits {ok[fmt]}, not {bits}")
    if fmt == "int8":
        return -127, 127
    if fmt == "int4":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 if fmt == "uint4" else 15


def choose_scales(w_GgN: Array, fmt: str, bits: int) -> tuple[Array, Array | None]:
    """Round-to-nearest grid per group (reducing axis -2): (scales_GN, offsets_GN or None).
    An all-zero (or, for uint4, constant) group gets scale 1, whose codes decode exactly."""
    hi = code_range(fmt, bits)[1]
    w = w_GgN.astype(jnp.float32)
    if fmt == "uint4":
        mn, mx = w.min(axis=-2), w.max(axis=-2)
        s = (mx - mn) / hi
        return jnp.where(s == 0, 1.0, s), mn
    absmax = jnp.abs(w).max(axis=-2)
    s = absmax if fmt == "nf4" else absmax / hi
    return jnp.where(s == 0, 1.0, s), None


def encode(w: Array, scales: Array, offsets: Array | None, fmt: str, bits: int) -> Array:
    """Nearest integer codes (int32, broadcasting w against scales), clipped to the range."""
    lo, hi = code_range(fmt, bits)
    w = w.astype(jnp.float32)
    s = scales.astype(jnp.float32)
    if fmt == "nf4":
        levels = jnp.asarray(NF4_LEVELS)
        midpoints = (levels[1:] + levels[:-1]) / 2
        return jnp.searchsorted(midpoints, w / s, side="left").astype(jnp.int32)
    if fmt == "uint4":
        w = w - offsets.astype(jnp.float32)
    return jnp.clip(jnp.round(w / s), lo, hi).astype(jnp.int32)


def decode(codes: Array, scales: Array, offsets: Array | None, fmt: str) -> Array:
    """float32 values of integer codes (broadcasting codes against scales)."""
    s = scales.astype(jnp.float32)
    if fmt == "nf4":
        return jnp.asarray(NF4_LEVELS)[codes] * s
    values = codes.astype(jnp.float32) * s
    return values + offsets.astype(jnp.float32) if fmt == "uint4" else values


def _check_layout(shape: tuple[int, ...], fmt: str, group: int, n_in: int, n_out: int) -> int:
    """The group size (0 -> K) after checking the layout fits `shape`."""
    if n_in < 1 or n_out < 0 or n_in + n_out > len(shape):
        raise ValueError(f"quantize: layout n_in={n_in}, n_out={n_out} does not fit {shape}")
    K = math.prod(shape[len(shape) - n_in - n_out : len(shape) - n_out])
    g = group or K
    if K % g:
        raise ValueError(f"quantize: group {g} does not divide the {K} input features of {shape}")
    if fmt in NIBBLE_FORMATS and shape[-1] % 2:
        raise ValueError(f"quantize: 4-bit codes pack in pairs; the last axis of {shape} is odd")
    return g


def _grouped(x: Array, shape: tuple[int, ...], n_lead: int, G: int, N: int) -> Array:
    return x.reshape(*shape[:n_lead], G, -1, N)


def quantize(
    w: Array, *, fmt: str, bits: int, group: int, n_in: int, n_out: int, act_bits: int | None = None
) -> QArray:
    """Round-to-nearest quantization of `w` (jittable; every keyword is static)."""
    shape = tuple(w.shape)
    g = _check_layout(shape, fmt, group, n_in, n_out)
    n_lead = len(shape) - n_in - n_out
    out_dims = shape[len(shape) - n_out :]
    K, N = math.prod(shape[n_lead : len(shape) - n_out]), math.prod(out_dims)
    w_GgN = _grouped(w, shape, n_lead, K // g, N)
    s_GN, o_GN = choose_scales(w_GgN, fmt, bits)
    codes = encode(w_GgN, s_GN[..., None, :], None if o_GN is None else o_GN[..., None, :],
                   fmt, bits).reshape(shape)  # fmt: skip
    as_out = lambda a: a.reshape(*shape[:n_lead], K // g, *out_dims)  # noqa: E731
    return from_codes(codes, as_out(s_GN), None if o_GN is None else as_out(o_GN), fmt=fmt,
                      bits=bits, group=g, n_in=n_in, n_out=n_out, dtype=str(w.dtype),
                      act_bits=act_bits)  # fmt: skip


def from_codes(
    codes: Array,
    scales: Array,
    offsets: Array | None,
    *,
    fmt: str,
    bits: int,
    group: int,
    n_in: int,
    n_out: int,
    dtype: str,
    act_bits: int | None = None,
) -> QArray:
    """A QArray from integer codes in the weight's logical shape (packed here)."""
    shape = tuple(codes.shape)
    g = _check_layout(shape, fmt, group, n_in, n_out)
    lo, _ = code_range(fmt, bits)
    if (offsets is not None) != (fmt == "uint4"):
        raise ValueError(f"quantize: offsets are for uint4 only (format {fmt})")
    if act_bits not in (None, 8) or (act_bits and fmt != "int8"):
        raise ValueError(f"quantize: act_bits={act_bits} needs int8 weights and must be 8")
    K = math.prod(shape[len(shape) - n_in - n_out : len(shape) - n_out])
    if act_bits and g != K:
        raise ValueError(f"quantize: W8A8 needs one scale per output channel (group {g} < K {K})")
    stored = codes.astype(jnp.int8) if fmt == "int8" else pack_nibbles(codes - lo)
    return QArray(stored, scales, offsets, fmt, bits, g, n_in, n_out, str(jnp.dtype(dtype)),
                  act_bits)  # fmt: skip


def unpacked_codes(q: QArray) -> Array:
    """int32 codes in the logical shape."""
    if q.fmt == "int8":
        return q.codes.astype(jnp.int32)
    return unpack_nibbles(q.codes).astype(jnp.int32) + code_range(q.fmt, q.bits)[0]


def dequantize(q: QArray) -> Array:
    """The weight back, in its logical shape and q.dtype (jittable)."""
    shape, n_lead = q.shape, len(q.lead_shape)
    G = q.K // q.group
    c = _grouped(unpacked_codes(q), shape, n_lead, G, q.N)
    s = q.scales.reshape(*shape[:n_lead], G, 1, q.N)
    o = None if q.offsets is None else q.offsets.reshape(*shape[:n_lead], G, 1, q.N)
    return decode(c, s, o, q.fmt).reshape(shape).astype(q.dtype)


# matmul rows (tokens) up to which the product runs as one multiply-reduce: at 1 and 4 rows
# it beat the dot on the dequantized weight in SmolLM2 decoding; a 16-row decode run with it
# had not finished after several times the dot path's time
FUSED_ROWS = 4


def matmul(x_MK: Array, q: QArray) -> Array:
    """x @ W[K, N] for a QArray without lead axes, in x's dtype (`Linear`'s product).

    Equal to `x @ dequantize(q)` up to float rounding (the sums run in another order), except
    with `act_bits=8`, where the activations are rounded to int8 first (W8A8). How
    XLA:CPU is made to read the codes, not a float copy, is in `_multiply_reduce`."""
    if q.lead_shape:
        raise ValueError(f"matmul: a QArray with lead axes {q.lead_shape} is a stack; slice it")
    if q.act_bits == 8:
        return _matmul_w8a8(x_MK, q)
    if x_MK.shape[0] <= FUSED_ROWS and q.fmt != "nf4":
        return _multiply_reduce(x_MK, q).astype(x_MK.dtype)
    if q.fmt == "int8" and q.group == q.K:  # one scale per column: apply it after the dot
        y = x_MK @ q.codes.reshape(q.K, q.N).astype(x_MK.dtype)
        return y * q.scales.reshape(1, q.N).astype(x_MK.dtype)
    return x_MK @ dequantize(q).reshape(q.K, q.N).astype(x_MK.dtype)


def _multiply_reduce(x_MK: Array, q: QArray) -> Array:
    """x @ W as sum_k x[m, k] * decode(code[k, n]): one elementwise-and-reduce fusion.

    XLA:CPU does not fuse a convert or multiply into a dot's operand: `x @ dequantize(q)`
    first writes the whole float weight to memory (a loop fusion) and then runs the dot on
    it, moving more bytes than the float model does. Written as a multiply and a sum over K,
    the decode, product and reduction become one fusion (`__ynn_fusion` in the optimised HLO)
    that streams the int8 or packed 4-bit codes once. Nibble formats are reduced as the two
    halves of each byte (even and odd columns) and interleaved after the sum."""
    M, G, g = x_MK.shape[0], q.K // q.group, q.group
    x_MGg1 = x_MK.astype(jnp.float32).reshape(M, G, g, 1)
    s_GN = q.scales.reshape(G, q.N).astype(jnp.float32)
    o_GN = None if q.offsets is None else q.offsets.reshape(G, q.N).astype(jnp.float32)
    if q.fmt == "int8":
        return _reduce_groups(x_MGg1, q.codes.reshape(G, g, q.N), s_GN, o_GN)
    lo = code_range(q.fmt, q.bits)[0]
    packed_GgH = q.codes.reshape(G, g, q.N // 2)
    halves = [
        _reduce_groups(x_MGg1, nibbles.astype(jnp.int8) + lo, s_GN[:, i::2],
                       None if o_GN is None else o_GN[:, i::2])
        for i, nibbles in enumerate((packed_GgH >> 4, packed_GgH & 0xF))
    ]  # fmt: skip
    return jnp.stack(halves, axis=-1).reshape(M, q.N)


def _reduce_groups(x_MGg1: Array, c_GgN: Array, s_GN: Array, o_GN: Array | None) -> Array:
    """sum over groups and their members of x * (c * s [+ o]); a single group's scale (per
    column) is applied after the sum."""
    if c_GgN.shape[0] == 1 and o_GN is None:
        return jnp.sum(x_MGg1 * c_GgN.astype(jnp.float32), axis=(1, 2)) * s_GN
    w_GgN = c_GgN.astype(jnp.float32) * s_GN[:, None]
    if o_GN is not None:
        w_GgN = w_GgN + o_GN[:, None]
    return jnp.sum(x_MGg1 * w_GgN, axis=(1, 2))


def _matmul_w8a8(x_MK: Array, q: QArray) -> Array:
    """Dynamic per-token int8 activations times per-channel int8 weights, int32 accumulation."""
    if q.group != q.K:
        raise ValueError("W8A8 needs one weight scale per output channel (group = K)")
    x = x_MK.astype(jnp.float32)
    xs_M = jnp.abs(x).max(axis=-1) / 127
    xs_M = jnp.where(xs_M == 0, 1.0, xs_M)
    xq_MK = jnp.clip(jnp.round(x / xs_M[:, None]), -127, 127).astype(jnp.int8)
    acc_MN = jax.lax.dot(xq_MK, q.codes.reshape(q.K, q.N), preferred_element_type=jnp.int32)
    y = acc_MN.astype(jnp.float32) * xs_M[:, None] * q.scales.reshape(1, q.N).astype(jnp.float32)
    return y.astype(x_MK.dtype)


def matmul_t(x_MD: Array, q: QArray) -> Array:
    """x @ W^T for a [V, D] table grouped along D (n_in 1, n_out 0): tied-embedding logits."""
    if q.n_out != 0 or q.n_in != 1 or len(q.lead_shape) != 1:
        raise ValueError(f"matmul_t: want a [V, D] table (n_in 1, n_out 0), got {q.shape}")
    return x_MD @ dequantize(q).T.astype(x_MD.dtype)


def take(q: QArray, idx: Array) -> Array:
    """Rows of a [V, D] table (n_in 1, n_out 0) dequantized: shape (*idx.shape, D)."""
    if q.n_out != 0 or q.n_in != 1 or len(q.lead_shape) != 1:
        raise ValueError(f"take: want a [V, D] table (n_in 1, n_out 0), got {q.shape}")
    pick = lambda a: None if a is None else jnp.take(a, idx, axis=0)  # noqa: E731
    return dequantize(dataclasses.replace(q, codes=pick(q.codes), scales=pick(q.scales),
                                          offsets=pick(q.offsets)))  # fmt: skip


def stack(qs: list[QArray]) -> QArray:
    """Per-layer QArrays of one layout stacked along a new leading (layers) axis."""
    static = {(q.fmt, q.bits, q.group, q.n_in, q.n_out, q.dtype, q.act_bits) for q in qs}
    if len(static) != 1:
        raise ValueError(f"stack: the QArrays differ in format or layout: {sorted(static)}")
    return jax.tree.map(lambda *a: jnp.stack(a), *qs)


def nbytes(q: QArray) -> int:
    leaves = [q.codes, q.scales] + ([] if q.offsets is None else [q.offsets])
    return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in leaves)


def bits_per_weight(q: QArray) -> float:
    """Stored bits per weight value, scales and offsets included."""
    return 8 * nbytes(q) / math.prod(q.shape)


def dequantize_reference(q: QArray) -> np.ndarray:
    """`dequantize` written plainly in numpy, one group of one column at a time."""
    codes = np.asarray(q.codes)
    if q.fmt != "int8":
        pairs = np.stack([codes >> 4, codes & 0xF], axis=-1).reshape(q.shape)
        codes = pairs.astype(np.int64) + code_range(q.fmt, q.bits)[0]
    G = q.K // q.group
    c = codes.astype(np.int64).reshape(-1, q.K, q.N)
    s = np.asarray(q.scales, np.float32).reshape(-1, G, q.N)
    o = None if q.offsets is None else np.asarray(q.offsets, np.float32).reshape(-1, G, q.N)
    out = np.zeros(c.shape, np.float32)
    for i, j, n in np.ndindex(c.shape[0], G, q.N):
        rows = slice(j * q.group, (j + 1) * q.group)
        v = NF4_LEVELS[c[i, rows, n]] if q.fmt == "nf4" else c[i, rows, n].astype(np.float32)
        out[i, rows, n] = v * s[i, j, n] + (o[i, j, n] if o is not None else np.float32(0))
    return out.reshape(q.shape).astype(q.dtype)

"""AWQ: activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978), one layer.

    layer = awq_layer(cfg, layer, x_BLD, PtqSpec(method="awq", fmt="int4", bits=4, group=64))

A few input channels carry large activations; their weights matter most. AWQ scales each
input channel j of a group of Linears by s_j (W' = diag(s) W) and divides the op before them by
s_j (X' = X diag(1/s)), which leaves the float product X' W' = X W unchanged but makes the
salient rows coarser-grained relative to the quantization step (sec. 3.2). Design choices:

- Scale groups (`scale_groups`): the Linears sharing one input and the op that produces it,
  as in the paper's code: (attn_norm -> q, k, v), (v -> o), (mlp_norm -> gate, up),
  (up -> down). A norm takes 1/s in its scale (and LayerNorm's bias). Only pre-norm blocks fold
  into norms: a post-norm output also feeds the residual stream, so those pairs are skipped.
  up -> down needs act(z / s) = act(z) / s: exact for gated MLPs (the scale rides the linear
  `up` branch) and for ReLU (positive homogeneity); skipped for an ungated GELU MLP.
- v -> o under grouped-query attention: query head n reads KV head n // G, and the attention
  output of head n is a convex combination of v's rows, so dividing v's output channel (k, h) by
  s_kh divides o's input channels (k G + g, h) for every g by the same s_kh. The fold is exact
  when o's scales are tied across the G query heads of a KV head; we tie them (the statistic
  averaged over the G heads), where AutoAWQ skips the pair unless v and o have equal shapes.
- Scale s = mean|x|^a per input channel, normalised by sqrt(max s * min s), for a on the grid
  {0, 1/n, ..., (n-1)/n} (n = spec.grid); a = 0 is plain RTN, so the chosen a never does worse
  than RTN on the calibration set. The loss is the output error of the group's Linears summed,
  sum_i ||X W_i - (X / s) Q(diag(s) W_i)||^2 = sum_i tr(E_i^T X^T X E_i) with
  E_i = diag(1/s) Q(diag(s) W_i) - W_i: one Gram matrix X^T X per group makes each grid point
  cost K^2 N instead of M K N (M calibration tokens >> K). `search_scale_reference` is the
  plain numpy loop over the tokens it must equal.
- Searches use the float layer's inputs (`calibration.linear_inputs`) and the float weights
  before any other group's fold, as AutoAWQ's search does: the v -> o and up -> down folds
  scale v's and up's output columns, which per-column RTN follows, but the attn_norm /
  mlp_norm groups' errors are then weighted differently per column, so the folds are not
  strictly independent of each other; each scale is the best for its group on the float
  layer, not a joint optimum.
- Weight clipping (the AWQ code's `auto_clip`): after the folds, each group of `group` weights
  of each output column is clamped to +-(1 - t) absmax for the t in {0, 0.05, ..., 0.45} that
  minimises that group's share of the output error, ||X_g (Q(clamp(w_g)) - w_g)||^2 (X_g the
  group's input channels, through the folded block; t = 0 is no clipping). q and k are not
  clipped, as in that code (their errors multiply in q k^T). `clip_reference` is the loop.
- Every Linear of the block is then quantized round-to-nearest (`llm.ops.quantized.quantize`)
  with spec.fmt / bits / group.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.compress.calibration import block_layouts, get_path, linear_inputs, set_path
from llm.compress.spec import PtqSpec
from llm.config import ModelConfig
from llm.ops import quantized
from llm.ops.quantized import NF4_LEVELS, code_range
from llm.typing import Array, PyTree

MIN_ACT = 1e-4  # floor on mean|x| before the power: a dead channel would give s = 0
NORMS = ("attn_norm", "mlp_norm")
CLIP_STEPS, CLIP_STEP = 10, 0.05  # clip search: shrink absmax by 0, 5, ..., 45 % (AWQ code)
NO_CLIP = ("attn/q/w", "attn/k/w")


@dataclasses.dataclass(frozen=True)
class ScaleGroup:
    """Linears reading one input, and the op before them that takes the inverse scales."""

    prev: str  # "attn_norm" | "mlp_norm" (a norm) or "attn/v" | "mlp/up" (a Linear)
    linears: tuple[str, ...]  # weight paths in the block tree, e.g. ("attn/q/w", ...)
    tie: tuple[int, int, int] | None = None  # (KV heads, G, H): o's channels sharing a scale

    @property
    def after_norm(self) -> bool:
        return self.prev in NORMS


def scale_groups(cfg: ModelConfig) -> tuple[ScaleGroup, ...]:
    """The groups whose fold is exact for this architecture (module docstring)."""
    groups = []
    pre = cfg.norm_placement == "pre"
    if pre:
        groups.append(ScaleGroup("attn_norm", ("attn/q/w", "attn/k/w", "attn/v/w")))
    tie = (cfg.kv_heads, cfg.n_heads // cfg.kv_heads, cfg.head_size)
    groups.append(ScaleGroup("attn/v", ("attn/o/w",), tie if tie[1] > 1 else None))
    if pre:
        mlp = ("mlp/gate/w", "mlp/up/w") if cfg.gated else ("mlp/up/w",)
        groups.append(ScaleGroup("mlp_norm", mlp))
    if cfg.gated or cfg.activation == "relu":
        groups.append(ScaleGroup("mlp/up", ("mlp/down/w",)))
    return tuple(groups)


# ----------------------------------------------------------------------------- the search


def tie_channels(stat_K: Array, tie: tuple[int, int, int] | None) -> Array:
    """A per-channel statistic averaged over the G query heads of each KV head (o's input
    channel n H + h with n = k G + g), broadcast back to all K channels; unchanged if no tie."""
    if tie is None:
        return stat_K
    kv, G, H = tie
    mean_kH = stat_K.reshape(kv, G, H).mean(axis=1, keepdims=True)
    return jnp.broadcast_to(mean_kH, (kv, G, H)).reshape(-1)


def candidate_scale(act_mean_K: Array, ratio: Array) -> Array:
    """s = mean|x|^ratio normalised by sqrt(max s * min s) (the AWQ code's normalisation)."""
    s = jnp.maximum(act_mean_K, MIN_ACT) ** ratio
    return s / jnp.sqrt(s.max() * s.min())


def fake_quant(w_KN: Array, fmt: str, bits: int, group: int) -> Array:
    """Q(w): round-to-nearest codes decoded back to float32, groups of `group` rows of K."""
    K, N = w_KN.shape
    g = group or K
    w_GgN = w_KN.astype(jnp.float32).reshape(K // g, g, N)
    s_GN, o_GN = quantized.choose_scales(w_GgN, fmt, bits)
    o = None if o_GN is None else o_GN[:, None]
    codes = quantized.encode(w_GgN, s_GN[:, None], o, fmt, bits)
    return quantized.decode(codes, s_GN[:, None], o, fmt).reshape(K, N)


@functools.partial(jax.jit, static_argnames=("fmt", "bits", "group", "grid", "tie"))
def scale_errors(
    gram_KK: Array,
    ws_KN: tuple[Array, ...],
    act_mean_K: Array,
    *,
    fmt: str,
    bits: int,
    group: int,
    grid: int,
    tie: tuple[int, int, int] | None = None,
) -> Array:
    """Output error sum_i tr(E_i^T (X^T X) E_i) at each grid ratio i / grid: [grid]."""
    act_mean_K = tie_channels(act_mean_K.astype(jnp.float32), tie)

    def error(ratio):
        s_K = candidate_scale(act_mean_K, ratio)
        total = jnp.float32(0)
        for w_KN in ws_KN:
            w = w_KN.astype(jnp.float32)
            e_KN = fake_quant(w * s_K[:, None], fmt, bits, group) / s_K[:, None] - w
            total += jnp.sum(e_KN * (gram_KK @ e_KN))
        return total

    return jax.lax.map(error, jnp.arange(grid, dtype=jnp.float32) / grid)


def search_scale(
    x_MK: Array, ws_KN: tuple[Array, ...], spec: PtqSpec, tie: tuple[int, int, int] | None = None
) -> tuple[Array, Array]:
    """The best per-channel scale s_K for Linears `ws_KN` reading `x_MK`, and the error of
    every grid point ([spec.grid]; index 0 is plain RTN)."""
    x = x_MK.astype(jnp.float32)
    act_mean_K = jnp.abs(x).mean(axis=0)
    errors = scale_errors(x.T @ x, tuple(ws_KN), act_mean_K, fmt=spec.fmt, bits=spec.bits,
                          group=spec.group, grid=spec.grid, tie=tie)  # fmt: skip
    ratio = jnp.argmin(errors).astype(jnp.float32) / spec.grid
    return candidate_scale(tie_channels(act_mean_K, tie), ratio), errors


def rtn_reference(w_KN: np.ndarray, fmt: str, bits: int, group: int) -> np.ndarray:
    """`fake_quant` written plainly in numpy, one group of rows at a time."""
    lo, hi = code_range(fmt, bits)
    w = np.asarray(w_KN, np.float32)
    g = group or w.shape[0]
    out = np.empty_like(w)
    for j in range(0, w.shape[0], g):
        blk = w[j : j + g]
        if fmt == "uint4":
            mn = blk.min(0)
            s = (blk.max(0) - mn) / np.float32(hi)
            s = np.where(s == 0, np.float32(1), s)
            out[j : j + g] = np.clip(np.round((blk - mn) / s), lo, hi) * s + mn
            continue
        amax = np.abs(blk).max(0)
        s = amax if fmt == "nf4" else amax / np.float32(hi)
        s = np.where(s == 0, np.float32(1), s)
        if fmt == "nf4":
            nearest = np.abs(blk[..., None] / s[:, None] - NF4_LEVELS).argmin(-1)
            out[j : j + g] = NF4_LEVELS[nearest] * s
        else:
            out[j : j + g] = np.clip(np.round(blk / s), lo, hi) * s
    return out


def search_scale_reference(
    x_MK, ws_KN, spec: PtqSpec, tie: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`search_scale` as the paper states it: ||X W - (X / s) Q(s W)||^2 over the tokens."""
    x = np.asarray(x_MK, np.float32)
    mean_K = np.abs(x).mean(0)
    if tie is not None:
        kv, G, H = tie
        mean_K = np.repeat(mean_K.reshape(kv, G, H).mean(1, keepdims=True), G, 1).reshape(-1)
    errors, scales = [], []
    for i in range(spec.grid):
        s = np.maximum(mean_K, MIN_ACT) ** np.float32(i / spec.grid)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        err = 0.0
        for w in ws_KN:
            w = np.asarray(w, np.float32)
            q = rtn_reference(w * s[:, None], spec.fmt, spec.bits, spec.group)
            diff = (x / s).astype(np.float64) @ q - x.astype(np.float64) @ w
            err += float(np.sum(diff**2))
        errors.append(err)
        scales.append(s)
    return scales[int(np.argmin(errors))], np.array(errors)


@functools.partial(jax.jit, static_argnames=("fmt", "bits", "group"))
def clip_errors(x_MK: Array, w_KN: Array, *, fmt: str, bits: int, group: int) -> Array:
    """[CLIP_STEPS, G, N]: group g's share of column n's output error, ||X_g (Q(w_g') - w_g)||^2,
    with w_g' the group clamped to +-(1 - t) absmax, for t = i * CLIP_STEP."""
    K, N = w_KN.shape
    g = group or K
    x_MGg = x_MK.astype(jnp.float32).reshape(-1, K // g, g)
    gram_Ggg = jnp.einsum("mGa,mGb->Gab", x_MGg, x_MGg)
    w_GgN = w_KN.astype(jnp.float32).reshape(K // g, g, N)
    absmax_G1N = jnp.abs(w_GgN).max(axis=1, keepdims=True)

    def error(shrink):
        m = absmax_G1N * (1 - shrink)
        q = fake_quant(jnp.clip(w_GgN, -m, m).reshape(K, N), fmt, bits, group)
        e_GgN = q.reshape(w_GgN.shape) - w_GgN
        return jnp.einsum("Gan,Gab,Gbn->Gn", e_GgN, gram_Ggg, e_GgN)

    return jax.lax.map(error, jnp.arange(CLIP_STEPS, dtype=jnp.float32) * CLIP_STEP)


def clip_weight(x_MK: Array, w_KN: Array, spec: PtqSpec) -> Array:
    """w_KN with each (group, column) clamped at its best shrink of `clip_errors`."""
    K, N = w_KN.shape
    g = spec.group or K
    errors = clip_errors(x_MK, w_KN, fmt=spec.fmt, bits=spec.bits, group=spec.group)
    shrink_GN = jnp.argmin(errors, axis=0).astype(jnp.float32) * CLIP_STEP
    w_GgN = w_KN.reshape(K // g, g, N)
    m = (jnp.abs(w_GgN).max(axis=1) * (1 - shrink_GN))[:, None].astype(w_KN.dtype)
    return jnp.clip(w_GgN, -m, m).reshape(K, N)


def clip_reference(x_MK, w_KN, spec: PtqSpec) -> np.ndarray:
    """`clip_weight` as a loop over groups, columns and shrinks, errors over the tokens."""
    x, w = np.asarray(x_MK, np.float32), np.asarray(w_KN, np.float32)
    g = spec.group or w.shape[0]
    out = w.copy()
    for j, n in np.ndindex(w.shape[0] // g, w.shape[1]):
        rows, col = slice(j * g, (j + 1) * g), w[j * g : (j + 1) * g, n : n + 1]
        best = None
        for i in range(CLIP_STEPS):
            m = np.abs(col).max() * np.float32(1 - i * CLIP_STEP)
            c = np.clip(col, -m, m)
            err = np.sum((x[:, rows] @ (rtn_reference(c, spec.fmt, spec.bits, 0) - col)) ** 2)
            if best is None or err < best[0]:
                best = (err, c)
        out[rows, n : n + 1] = best[1]
    return out


# ----------------------------------------------------------------------------- folding


def scale_rows(w: Array, s_K: Array) -> Array:
    """diag(s) W: the K input rows (the leading axes of w, K of them in all) times s."""
    K = s_K.shape[0]
    w_KN = w.reshape(K, -1)
    return (w_KN * s_K[:, None].astype(w.dtype)).reshape(w.shape)


def divide_outputs(linear: dict, s_N: Array) -> dict:
    """A Linear {w, [b]} whose N output channels (w's trailing axes) are divided by s."""
    out = dict(linear)
    N = s_N.shape[0]
    out["w"] = (linear["w"].reshape(-1, N) / s_N.astype(linear["w"].dtype)).reshape(
        linear["w"].shape
    )
    if linear.get("b") is not None:
        out["b"] = (linear["b"].reshape(N) / s_N.astype(linear["b"].dtype)).reshape(
            linear["b"].shape
        )
    return out


def divide_norm(norm: dict, s_D: Array) -> dict:
    """A LayerNorm / RMSNorm {scale, [bias]} whose output is divided by s."""
    return {k: (v if v is None else v / s_D.astype(v.dtype)) for k, v in norm.items()}


def fold_scale(layer: PyTree, group: ScaleGroup, s_K: Array) -> PyTree:
    """The block with the group's Linears' input rows times s and the op before them divided
    by s: the float block computes the same function (exactly, up to rounding)."""
    s_K = s_K.astype(jnp.float32)
    if group.after_norm:
        layer = {**layer, group.prev: divide_norm(layer[group.prev], s_K)}
    else:
        s_prev = s_K if group.tie is None else s_K.reshape(group.tie)[:, 0].reshape(-1)
        layer = set_path(layer, group.prev, divide_outputs(get_path(layer, group.prev), s_prev))
    for path in group.linears:
        layer = set_path(layer, path, scale_rows(get_path(layer, path), s_K))
    return layer


def as_matrix(w: Array, K: int) -> Array:
    """A weight (*in_dims, *out_dims) as [K, N], K = prod(in_dims)."""
    if w.size % K:
        raise ValueError(f"a weight of shape {w.shape} has no {K} input rows")
    return w.reshape(K, -1)


# ----------------------------------------------------------------------------- the layer


def quantize_block(
    cfg: ModelConfig, layer: PyTree, *, fmt: str, bits: int, group: int, act_bits=None
) -> PyTree:
    """Every Linear weight of the block, round-to-nearest, as a QArray."""
    for path, (n_in, n_out) in block_layouts(cfg).items():
        w = get_path(layer, path)
        q = quantized.quantize(w, fmt=fmt, bits=bits, group=group, n_in=n_in, n_out=n_out,
                               act_bits=act_bits)  # fmt: skip
        layer = set_path(layer, path, q)
    return layer


def awq_scales(
    cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec
) -> list[tuple[ScaleGroup, Array, Array]]:
    """(group, chosen s_K, errors over the grid) for every scale group of the block."""
    x_by_linear = linear_inputs(cfg, layer, x_BLD)
    found = []
    for group in scale_groups(cfg):
        x_MK = x_by_linear[group.linears[0]]
        ws = tuple(as_matrix(get_path(layer, p), x_MK.shape[-1]) for p in group.linears)
        s_K, errors = search_scale(x_MK, ws, spec, group.tie)
        found.append((group, s_K, errors))
    return found


def clip_block(cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec) -> PyTree:
    """The block with every Linear but q and k clamped by the clip search on its inputs."""
    xs = linear_inputs(cfg, layer, x_BLD)
    for path in block_layouts(cfg):
        if path not in NO_CLIP:
            w = get_path(layer, path)
            w_KN = clip_weight(xs[path], as_matrix(w, xs[path].shape[1]), spec)
            layer = set_path(layer, path, w_KN.reshape(w.shape))
    return layer


def awq_layer(
    cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec, *, clip: bool = True
) -> PyTree:
    """AWQ on one block (a `LayerMethod`): search each group's scales on `x_BLD`, fold them
    into the block, search the weight clipping (unless `clip` is False), then quantize every
    Linear round-to-nearest (spec.fmt / bits / group)."""
    for group, s_K, _ in awq_scales(cfg, layer, x_BLD, spec):
        layer = fold_scale(layer, group, s_K)
    if clip:
        layer = clip_block(cfg, layer, x_BLD, spec)
    return quantize_block(cfg, layer, fmt=spec.fmt, bits=spec.bits, group=spec.group)

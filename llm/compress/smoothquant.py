"""SmoothQuant W8A8 (Xiao et al. 2022, arXiv:2211.10438), one transformer block at a time.

    layer = smoothquant_layer(cfg, layer, x_BLD, PtqSpec(method="smoothquant", fmt="int8",
                                                        bits=8, alpha=0.5))

Activations of LLMs have a few outlier channels that make per-token int8 quantization coarse;
weights are easy to quantize. SmoothQuant moves difficulty from activations to weights with a
per-input-channel scale (sec. 4, eq. 4)

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

dividing X's channel j by s_j (folded into the op before the Linears, so no runtime cost) and
multiplying W's row j by s_j; the float product is unchanged. Design choices:

- Smoothed groups: the Linears after a norm, (attn_norm -> q, k, v) and (mlp_norm -> gate, up),
  in pre-norm blocks (a post-norm output also feeds the residual stream, so it cannot take the
  scale). max|W_j| is over all Linears of the group (one input, one scale), as in the paper's
  code. The folding is AWQ's (`llm.compress.awq.fold_scale`).
- o and down are W8A8 without smoothing, as the paper's code does for the Linears that do not
  follow a LayerNorm (its OPT / Llama recipes smooth only the norm-fed projections).
- Weights int8 with one scale per output channel (group 0: the integer product x_q W_q needs
  a single weight scale per column; spec.group is not used), `act_bits=8` on every QArray, so
  `llm.ops.quantized.matmul` quantizes each activation row (per token, absmax / 127)
  dynamically and multiplies int8 by int8 into int32 (the paper's "O1"-style dynamic
  per-token scheme). `w8a8_matmul_reference` is that arithmetic in plain numpy.
- max|X_j| comes from the calibration inputs of the float block (`calibration.linear_inputs`);
  a channel with max|X_j| = 0 or max|W_j| = 0 gets s_j = 1 (nothing to migrate).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from llm.compress.awq import (
    ScaleGroup,
    as_matrix,
    fold_scale,
    get_path,
    quantize_block,
    scale_groups,
)
from llm.compress.calibration import linear_inputs
from llm.compress.spec import PtqSpec
from llm.config import ModelConfig
from llm.ops.quantized import QArray, unpacked_codes
from llm.typing import Array, PyTree


def smoothing_scale(x_max_K: Array, w_max_K: Array, alpha: float) -> Array:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); 1 where either maximum is 0."""
    x_max = x_max_K.astype(jnp.float32)
    w_max = w_max_K.astype(jnp.float32)
    ok = (x_max > 0) & (w_max > 0)
    s = jnp.where(ok, x_max, 1.0) ** alpha / jnp.where(ok, w_max, 1.0) ** (1.0 - alpha)
    return jnp.where(ok, s, 1.0)


def smoothquant_scales(
    cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec
) -> list[tuple[ScaleGroup, Array]]:
    """(group, s_K) for the norm-fed groups of the block (module docstring)."""
    x_by_linear = linear_inputs(cfg, layer, x_BLD)
    found = []
    for group in scale_groups(cfg):
        if not group.after_norm:
            continue
        x_MK = x_by_linear[group.linears[0]]
        K = x_MK.shape[-1]
        w_max_K = jnp.stack(
            [jnp.abs(as_matrix(get_path(layer, p), K)).max(axis=1) for p in group.linears]
        ).max(axis=0)
        found.append((group, smoothing_scale(jnp.abs(x_MK).max(axis=0), w_max_K, spec.alpha)))
    return found


def smoothquant_layer(cfg: ModelConfig, layer: PyTree, x_BLD: Array, spec: PtqSpec) -> PyTree:
    """SmoothQuant on one block (a `LayerMethod`): fold the smoothing scales into the norms,
    then every Linear int8 per output channel with per-token int8 activations (W8A8)."""
    if (spec.fmt, spec.bits) != ("int8", 8):
        raise ValueError(
            f"smoothquant is W8A8: spec fmt={spec.fmt!r} bits={spec.bits}; want int8, 8 bits"
        )
    scales = smoothquant_scales(cfg, layer, x_BLD, spec)
    if not scales:
        raise ValueError(
            "smoothquant folds its scales into the norm before the linears; this "
            "model has none there (post-norm): nothing would be smoothed"
        )
    for group, s_K in scales:
        layer = fold_scale(layer, group, s_K)
    return quantize_block(cfg, layer, fmt="int8", bits=8, group=0, act_bits=8)


def w8a8_matmul_reference(x_MK: np.ndarray, q: QArray) -> np.ndarray:
    """The W8A8 product in plain numpy: x rows to int8 (absmax / 127 per row), an integer dot
    product with the int8 weight codes, then both scales."""
    x = np.asarray(x_MK, np.float32)
    xs_M = np.abs(x).max(axis=1) / np.float32(127)
    xs_M = np.where(xs_M == 0, np.float32(1), xs_M)
    xq_MK = np.clip(np.round(x / xs_M[:, None]), -127, 127).astype(np.int64)
    w_KN = np.asarray(unpacked_codes(q), np.int64).reshape(q.K, q.N)
    acc_MN = (xq_MK @ w_KN).astype(np.float32)
    return acc_MN * xs_M[:, None] * np.asarray(q.scales, np.float32).reshape(1, q.N)

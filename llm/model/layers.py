"""Small NNX layers with logical axis names on every parameter.

Logical axis names (mapped to mesh axes by one rules table in the sharding code; model code
never names a mesh axis):

    vocab  embed  mlp  heads  kv_heads  head_dim  position  layers

Parameters are created with `eager_sharding=False`: Flax 0.12 would otherwise try to shard
each variable the moment it is created, which needs a mesh in context. We decide placement
once, elsewhere: params are built abstractly (`nnx.eval_shape`) and materialised by a jitted
init whose `out_shardings` come from these names. The names live in each Param's
`out_sharding` metadata and are read back by `llm.model.logical_axes`.

Weights are stored in `param_dtype` and cast to the computation `dtype` where used. A weight
may also be a `llm.ops.quantized.QArray` (a quantized model, docs/compression.md): `Linear`
then multiplies by it with `quantized.matmul` (for a few rows, decoding, without a float copy
of the weight; for more rows and NF4 through the dequantized weight, made inside the step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model import norms
from llm.model.batchnorm import BatchNorm
from llm.ops import quantized
from llm.typing import Array


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    """A Param initialised by `init(key, shape, dtype)`, tagged with logical `axes`."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


def normal(std: float):
    return nnx.initializers.normal(stddev=std)


zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


class Linear(nnx.Module):
    """y = einsum(spec, x, w) [+ b]: a dense layer whose weight keeps its head structure.

    `spec` is an einsum such as "BLD,DNH->BLNH" so q/k/v/o projections keep (heads, head_dim)
    as separate, separately shardable axes instead of a flattened matrix. The contracted axes
    must be the trailing axes of x and the leading axes of w, and the product runs as one 2-D
    matmul over all leading axes ([B*L, D] @ [D, N*H]): XLA's CPU backend differentiates a
    3-D einsum into weight gradients contracted over two axes at once, which it runs about 3x
    slower than the same 2-D matmul (docs/LOG.md, "train step on CPU").

    `record = True` (set on a merged module by llm/compress/calibration.py, which runs it
    under `nnx.capture`) sows the matmul's input [M, K] as an `nnx.Intermediate` named
    "inputs": the activations calibrated
    compression methods (GPTQ, AWQ, Wanda, ...) read.
    """

    record: bool = False

    def __init__(
        self,
        spec: str,
        shape: tuple[int, ...],
        axes: tuple[str, ...],
        *,
        bias_shape: tuple[int, ...] | None,
        bias_axes: tuple[str, ...] = (),
        std: float,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.spec, self.dtype = spec, dtype
        self.n_in = _contracted_axes(spec)
        self.w = param(rngs, normal(std), shape, axes, param_dtype)
        self.b = param(rngs, zeros, bias_shape, bias_axes, param_dtype) if bias_shape else None

    def __call__(self, x: Array) -> Array:
        w = self.w.get_value()
        lead, n_in = x.shape[: x.ndim - self.n_in], self.n_in
        in_size, out_shape = math.prod(w.shape[:n_in]), w.shape[n_in:]
        x_MK = x.astype(self.dtype).reshape(-1, in_size)
        if self.record:
            self.sow(nnx.Intermediate, "inputs", x_MK)
        if quantized.is_qarray(w):
            y = quantized.matmul(x_MK, w)
        else:
            y = x_MK @ w.astype(self.dtype).reshape(in_size, -1)
        y = y.reshape(*lead, *out_shape)
        if self.b is not None:
            y = y + self.b[...].astype(self.dtype)
        return y


def _contracted_axes(spec: str) -> int:
    """How many axes `spec` contracts; checks they trail in x and lead in w, in order."""
    inputs, out = spec.replace(" ", "").split("->")
    x_axes, w_axes = inputs.split(",")
    contracted = [a for a in x_axes if a in w_axes and a not in out]
    n = len(contracted)
    if not n or x_axes[-n:] != "".join(contracted) or w_axes[:n] != "".join(contracted):
        raise ValueError(f"Linear {spec=}: contracted axes must trail in x and lead in w")
    if out != x_axes[:-n] + w_axes[n:]:
        raise ValueError(f"Linear {spec=}: output must be x's free axes then w's")
    return n


class LayerNorm(nnx.Module):
    """LayerNorm (Ba et al., 2016, arXiv:1607.06450), statistics in float32 (`norms.py`)."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, bias: bool, param_dtype, rngs):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, zeros, (dim,), (axis_name,), param_dtype) if bias else None

    def __call__(self, x: Array) -> Array:
        bias = None if self.bias is None else self.bias[...]
        return norms.layer_norm(x, self.scale[...], bias, self.eps)


class RMSNorm(nnx.Module):
    """RMSNorm (Zhang & Sennrich, 2019, arXiv:1910.07467): no mean subtraction, no bias."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, param_dtype, rngs):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: Array) -> Array:
        return norms.rms_norm(x, self.scale[...], self.eps)


def make_norm(cfg, dim: int, axis_name: str, rngs: nnx.Rngs) -> LayerNorm | RMSNorm | BatchNorm:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, axis_name, eps=cfg.norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    if cfg.norm == "batchnorm":  # llm/model/batchnorm.py: called with the token mask
        return BatchNorm(
            dim, axis_name, eps=cfg.norm_eps, bias=cfg.norm_bias, param_dtype=cfg.param_dtype,
            rngs=rngs,
        )  # fmt: skip
    return LayerNorm(
        dim, axis_name, eps=cfg.norm_eps, bias=cfg.norm_bias, param_dtype=cfg.param_dtype, rngs=rngs
    )


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when `key` is None (evaluation) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)

"""BatchNorm as a norm choice (`model.norm=batchnorm`): the LayerNorm-vs-BatchNorm lesson.

BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167) normalises each channel with the mean and
variance over the batch, here over every (row, position) of the batch that is not padding
(segment id 0): y = (x - mean_D) / sqrt(var_D + eps) * scale + bias. LayerNorm normalises
each token over its channels instead. Shen et al. 2020 (PowerNorm, arXiv:2003.07845) show why
BatchNorm does poorly in Transformers: the batch statistics of text fluctuate strongly from
batch to batch, and so do their gradients.

Design choices:
* Training normalises with the batch statistics. Evaluation, KV-cache decoding and the
  logit lens normalise with population statistics instead: `mean` and `var` leaves beside
  `scale` (init 0 and 1), which the training forward never reads, so their gradient is
  exactly zero and the optimiser leaves them unchanged (no weight decay: their paths match
  the "norm" no-decay pattern). They are written by PreciseBN (Wu & Johnson 2021,
  arXiv:2105.07576; `llm/model/precise_bn.py`): the pooled statistics of K training-mode
  batches, computed outside the train step, which stays a pure function of the params.
  So there is no running-average state for the step to update.
* Which statistics: a forward with a dropout key is a training forward (batch statistics);
  without one (evaluation, decoding, `readout`) it uses the stored ones. A model never
  calibrated still has var all 1 and mean all 0: used eagerly (concrete params), that is
  refused by name; under `jit` the check cannot run, which is why `llm train` calibrates
  before every evaluation and before its final checkpoint.
* Padding is excluded from the statistics (its outputs are normalised with the same ones).
* A causal LM with batch statistics is not strictly causal: every token's normalisation reads
  a mean over the whole batch, later positions included, so a prediction depends (weakly) on
  the future. That leak is part of the lesson (tests/model/test_batchnorm.py measures it);
  with stored statistics the evaluation forward is causal again.
* Under data parallelism the sums over the batch axis are global (GSPMD inserts the
  all-reduce): synchronised BatchNorm by construction.
* Statistics in float32 whatever the activation dtype; plain jnp, so autodiff gives the
  exact gradient through the batch statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.typing import Array


def masked_moments(x_BLD: Array, valid_BL: Array) -> tuple[Array, Array]:
    """Per-channel mean and (biased, population) variance of the valid tokens, float32."""
    x32 = x_BLD.astype(jnp.float32)
    w_BL1 = valid_BL.astype(jnp.float32)[..., None]
    n = jnp.maximum(w_BL1.sum(), 1.0)
    mean_D = (x32 * w_BL1).sum((0, 1)) / n
    var_D = (jnp.square(x32 - mean_D) * w_BL1).sum((0, 1)) / n
    return mean_D, var_D


def normalize(x_BLD: Array, mean_D, var_D, scale_D, bias_D, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale (+ bias), computed in float32."""
    x32 = x_BLD.astype(jnp.float32)
    y = (x32 - mean_D) * jax.lax.rsqrt(var_D.astype(jnp.float32) + eps)
    y = y * scale_D.astype(jnp.float32)
    if bias_D is not None:
        y = y + bias_D.astype(jnp.float32)
    return y.astype(x_BLD.dtype)


def batch_norm_reference(
    x_BLD: Array, valid_BL: Array, scale_D: Array, bias_D: Array | None, eps: float
) -> Array:
    """Per-channel normalisation with the mean and (biased) variance of the valid tokens."""
    mean_D, var_D = masked_moments(x_BLD, valid_BL)
    return normalize(x_BLD, mean_D, var_D, scale_D, bias_D, eps)


class BatchNorm(nnx.Module):
    """Learned scale (and bias) over batch statistics of the non-padding tokens (training)
    or over the stored population statistics `mean` / `var` (evaluation and decoding).

    `record = True` (set on a merged module by llm/model/precise_bn.py, which runs it under
    `nnx.capture`) sows a training forward's batch mean and variance as `nnx.Intermediate`
    "moments"."""

    record: bool = False

    def __init__(self, dim: int, axis_name: str, *, eps: float, bias: bool, param_dtype, rngs):
        del rngs  # ones and zeros: nothing random
        self.eps = eps
        self.scale = _param(jnp.ones((dim,), param_dtype), axis_name)
        self.bias = _param(jnp.zeros((dim,), param_dtype), axis_name) if bias else None
        self.mean = _param(jnp.zeros((dim,), param_dtype), axis_name)  # PreciseBN writes these
        self.var = _param(jnp.ones((dim,), param_dtype), axis_name)

    def __call__(self, x_BLD: Array, valid_BL: Array | None = None, *, train: bool = False):
        """`train`: normalise with the statistics of `valid_BL`'s tokens (required then);
        else with the stored population statistics."""
        bias = None if self.bias is None else self.bias[...]
        if not train:
            mean_D, var_D = self.mean[...], self.var[...]
            check_calibrated(mean_D, var_D)
            return normalize(x_BLD, mean_D, var_D, self.scale[...], bias, self.eps)
        if valid_BL is None:
            raise ValueError("BatchNorm's training forward needs the token mask valid_BL")
        mean_D, var_D = masked_moments(x_BLD, valid_BL)
        if self.record:
            self.sow(nnx.Intermediate, "moments", (mean_D, var_D))
        return normalize(x_BLD, mean_D, var_D, self.scale[...], bias, self.eps)


def _param(value: Array, axis_name: str) -> nnx.Param:
    return nnx.Param(value, out_sharding=(axis_name,), eager_sharding=False)


def check_calibrated(mean_D: Array, var_D: Array) -> None:
    """Refuses stored statistics still at their init (mean 0, var 1) where that can be
    seen: concrete params (eager, or closed over by a jitted function); params passed
    into `jit` are tracers and cannot be read."""
    try:
        mean, var = np.asarray(mean_D), np.asarray(var_D)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if (mean == 0).all() and (var == 1).all():
        raise ValueError(
            "model.norm=batchnorm: this model's population statistics were never calibrated "
            "(mean 0, var 1); run llm.model.precise_bn.calibrate on training batches before "
            "evaluating or decoding (llm/model/batchnorm.py)"
        )


def apply_norm(norm: nnx.Module, x_BLD: Array, segment_ids_BL: Array, train: bool) -> Array:
    """`norm(x)`; a BatchNorm is also given the non-padding tokens (segment id != 0) and
    whether this is a training forward (batch statistics) or not (stored ones)."""
    if isinstance(norm, BatchNorm):
        return norm(x_BLD, segment_ids_BL != 0, train=train)
    return norm(x_BLD)

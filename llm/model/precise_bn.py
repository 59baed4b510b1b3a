"""PreciseBN: a BatchNorm model's population statistics, pooled over K training batches.

    params = calibrate(cfg, params, batches)   # batches: dicts with "inputs" (and
                                               # "positions", "segment_ids") like training's

Wu & Johnson 2021 ("Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, sec. 3) replace the
exponential moving average of batch statistics by PreciseBN: after training, run the
training-mode forward on K batches with the final weights and aggregate their statistics
exactly. We do the same whenever a population estimate is needed (`llm train` calls it
before each evaluation and before the final checkpoint), so the train step never updates
statistics and stays a pure function of the params.

* Each batch's per-norm mean m_k and population variance v_k over its n_k real tokens are
  sown by `BatchNorm` (`record`, read with `nnx.capture`) while the blocks run one at a
  time on the residual stream the previous block produced, as in the training forward (the
  model definition is not copied; llm/compress/calibration.py reads `Linear` inputs the
  same way). The final norm's input is the last block's output.
* Pooled exactly over all N = sum n_k tokens (float64 on the host):
  mean = sum n_k m_k / N,  var = sum n_k (v_k + m_k^2) / N - mean^2,
  i.e. numpy's mean and variance over every real token of the K batches.
* The calibration forward runs without dropout (its rates are set to 0), so the statistics
  describe the activations the evaluation forward sees.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.config import ModelConfig
from llm.model.batchnorm import BatchNorm, masked_moments
from llm.model.functional import abstract_model
from llm.ops.masks import default_positions
from llm.typing import Array, PyTree

NORMS = ("attn_norm", "mlp_norm")  # the BatchNorms of a block (the model adds final_norm)


def _calibration_cfg(cfg: ModelConfig) -> ModelConfig:
    """`cfg` without dropout: the statistics are those of the deterministic forward."""
    if cfg.norm != "batchnorm":
        raise ValueError(f"PreciseBN calibrates model.norm=batchnorm, got {cfg.norm!r}")
    if cfg.prefix_lm:
        raise ValueError("PreciseBN: model.prefix_lm batches are not supported")
    return dataclasses.replace(cfg, embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)


@functools.partial(jax.jit, static_argnums=0)
def batch_moments(cfg: ModelConfig, params: PyTree, batch: dict[str, Array]) -> PyTree:
    """One batch's statistics: {"blocks": {norm: (mean_YD, var_YD)}, "final_norm": (mean_D,
    var_D), "n": real tokens}, from the training-mode forward (batch statistics)."""
    cfg = _calibration_cfg(cfg)
    tokens_BL = batch["inputs"]
    B, L = tokens_BL.shape
    positions_BL = batch.get("positions", default_positions(B, L))
    segment_ids_BL = batch.get("segment_ids", jnp.ones((B, L), jnp.int32))
    model = nnx.merge(nnx.split(abstract_model(cfg))[0], params)
    block_def, stacked = nnx.split(model.blocks)
    key = jax.random.key(0)  # marks a training forward; every dropout rate is 0
    x_BLD = model.embed(tokens_BL, positions_BL)
    per_layer = []
    for i in range(cfg.n_layers):
        block = nnx.merge(block_def, jax.tree.map(lambda a, i=i: a[i], stacked))
        for _, node in nnx.iter_graph(block):
            if isinstance(node, BatchNorm):
                node.record = True
        out, sown = nnx.capture(block, nnx.Intermediate)(x_BLD, positions_BL, segment_ids_BL, key)
        x_BLD = out.hidden_BLD
        sown = nnx.to_pure_dict(sown)
        per_layer.append({name: _only(sown[name]["moments"], name) for name in NORMS})
    valid_BL = segment_ids_BL != 0
    moments = {"blocks": jax.tree.map(lambda *a: jnp.stack(a), *per_layer)}
    if model.final_norm is not None:
        moments["final_norm"] = masked_moments(x_BLD, valid_BL)
    moments["n"] = valid_BL.sum()
    return moments


def _rows(batch: Any) -> dict[str, Array]:
    """A calibration batch, refused unless its "inputs" are [B, L] token rows."""
    ndim = len(getattr(batch["inputs"], "shape", ()))
    if ndim != 2:
        raise ValueError(
            f"PreciseBN: batch 'inputs' must be [B, L] token rows, got {ndim} dims "
            "(pair / choice batches are not supported)"
        )
    return dict(batch)


def _only(values: Any, name: str) -> tuple[Array, Array]:
    """The (mean, var) a norm sowed once (sow appends to a tuple)."""
    if len(values) != 1:
        raise ValueError(f"BatchNorm {name} ran {len(values)} times in one block, expected 1")
    return tuple(values[0])


def pool(moments: list[PyTree]) -> PyTree:
    """Exact pooled mean and population variance over all batches' real tokens (float64)."""
    n_K = np.array([float(m["n"]) for m in moments])
    if n_K.sum() == 0:
        raise ValueError("PreciseBN: the calibration batches hold no real (non-padding) token")
    w_K = n_K / n_K.sum()

    def pooled(*per_batch):
        means = np.stack([np.asarray(p[0], np.float64) for p in per_batch])
        vars_ = np.stack([np.asarray(p[1], np.float64) for p in per_batch])
        w = w_K.reshape((-1,) + (1,) * (means.ndim - 1))
        mean = (w * means).sum(0)
        second = (w * (vars_ + means**2)).sum(0)
        return mean, np.maximum(second - mean**2, 0.0)

    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    trees = [{k: v for k, v in m.items() if k != "n"} for m in moments]
    return jax.tree.map(pooled, *trees, is_leaf=is_pair)


def write_statistics(params: PyTree, stats: PyTree) -> PyTree:
    """`params` with every BatchNorm's `mean` / `var` replaced by `stats` (dtype and
    sharding of the old leaves kept)."""

    def put(old: Array, new: np.ndarray) -> Array:
        value = jnp.asarray(new, old.dtype)
        sharding = getattr(old, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else value

    def norm(old: dict, pair: tuple) -> dict:
        return {**old, "mean": put(old["mean"], pair[0]), "var": put(old["var"], pair[1])}

    blocks = {**params["blocks"]}
    for name, pair in stats["blocks"].items():
        blocks[name] = norm(blocks[name], pair)
    out = {**params, "blocks": blocks}
    if "final_norm" in stats:
        out["final_norm"] = norm(params["final_norm"], stats["final_norm"])
    return out


def calibrate(cfg: ModelConfig, params: PyTree, batches: Iterable[dict[str, Array]]) -> PyTree:
    """`params` with population statistics pooled over `batches` (PreciseBN)."""
    if isinstance(params.get("blocks"), tuple):
        raise ValueError("PreciseBN: pass stacked block params, not llm.model.unstack_layers'")
    want = set(nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param)))
    if set(params) != want:
        raise ValueError(
            f"PreciseBN needs the whole decoder's params (top level {sorted(want)}), got "
            f"{sorted(params)}: merge a train.freeze / PEFT split first (model_params)"
        )
    moments = [jax.device_get(batch_moments(cfg, params, _rows(b))) for b in batches]
    if not moments:
        raise ValueError("PreciseBN: no calibration batch given")
    return write_statistics(params, pool(moments))

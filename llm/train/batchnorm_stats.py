"""PreciseBN in a training run: `model.norm=batchnorm`'s population statistics, written into
the train state before each evaluation and each checkpoint (once per step).

The statistics are params the train step never changes (their gradient is exactly zero and
their paths match the "norm" no-decay pattern, tests/train/test_batchnorm_stats.py), so
writing them into `state.params` between steps changes nothing the optimiser sees; they are
saved with the checkpoint, so a loaded model evaluates and decodes with them.
The batches are the first `model.batchnorm_calibration_batches` of a fresh training-split
iterator (the run's own iterator is not advanced: its position is checkpointed state), the
same ones at every calibration. See llm/model/precise_bn.py (Wu & Johnson 2021,
arXiv:2105.07576).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from llm.config import Config
from llm.config.base import check
from llm.model.precise_bn import batch_moments, pool, write_statistics
from llm.train.losses.base import Loss
from llm.train.losses.rl import RLLoss
from llm.train.state import TrainState
from llm.train.trainable import MODEL, model_params


def take_batches(batches: Iterator[dict[str, np.ndarray]], k: int) -> list[dict[str, np.ndarray]]:
    """The first `k` host batches of `batches` (fewer only if it ends: refused)."""
    taken = [b for _, b in zip(range(k), batches, strict=False)]
    if len(taken) < k:
        raise ValueError(
            f"model.batchnorm_calibration_batches={k}: the training split gave only "
            f"{len(taken)} batches"
        )
    return taken


def calibrate_state(
    cfg: Config, state: TrainState, host_batches: list[dict[str, np.ndarray]], put: Callable
) -> TrainState:
    """`state` with its decoder's BatchNorm statistics pooled over `host_batches`.

    The calibration forward runs the whole decoder (`model_params`: trainable and frozen
    leaves merged, adapters applied, as the loss runs it); the pooled mean / var are written
    back into the trainable tree, where the statistics must live (`train.freeze` may freeze
    other params, not them)."""
    model: Any = state.params.get(MODEL, {})
    norms = [model.get("blocks", {}).get(n, {}) for n in ("attn_norm", "mlp_norm")]
    full = model_params(state.params, state.frozen)
    if "final_norm" in full:
        norms.append(model.get("final_norm", {}))
    if not all("mean" in n and "var" in n for n in norms):
        raise ValueError(
            "model.norm=batchnorm: PreciseBN writes the statistics into the trained decoder "
            "params; this run freezes them (train.freeze / PEFT), which is not supported"
        )
    stats = pool([jax.device_get(batch_moments(cfg.model, full, put(b))) for b in host_batches])
    blocks = {**model["blocks"]}
    for name, pair in stats["blocks"].items():
        blocks[name] = _with_stats(blocks[name], pair)
    new_model = {**model, "blocks": blocks}
    if "final_norm" in stats:
        new_model["final_norm"] = _with_stats(model["final_norm"], stats["final_norm"])
    return dataclasses.replace(state, params={**state.params, MODEL: new_model})


def _with_stats(norm: dict, pair: tuple) -> dict:
    """A norm's (possibly partial) trainable subtree with only its mean / var replaced."""
    tree = write_statistics({"blocks": {}, "final_norm": norm}, {"blocks": {}, "final_norm": pair})
    return tree["final_norm"]


def check_batchnorm_run(cfg: Config, loss: Loss) -> None:
    """Refuses, before training, the runs whose PreciseBN statistics would be wrong: batches
    other than [B, L] token rows of the training split (pairs, choices, RL rollouts), a
    prefix-LM (calibration passes no prefix) and QAT (statistics of the float forward)."""
    if cfg.model.norm != "batchnorm":
        return
    rows = tuple(loss.batch_axes.get("inputs", ())) == ("batch", "length")
    check(
        rows and not isinstance(loss, RLLoss),
        "model.norm",
        f"batchnorm calibrates on [B, L] training rows; loss.name={loss.name!r} trains on "
        "pairs, choices or rollouts: use another model.norm",
    )
    check(
        not cfg.model.prefix_lm,
        "model.prefix_lm",
        "PreciseBN calibration (model.norm=batchnorm) runs plain causal forwards, no prefix",
    )
    check(
        cfg.train.qat.fmt == "none",
        "train.qat.fmt",
        "model.norm=batchnorm calibrates on the float forward, not the fake-quantized one "
        "QAT trains: use another model.norm",
    )

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

import numpy as np

from llm.config import Config
from llm.model.precise_bn import calibrate
from llm.train.state import TrainState
from llm.train.trainable import MODEL


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
    """`state` with its decoder's BatchNorm statistics pooled over `host_batches`."""
    model: Any = state.params.get(MODEL, {})
    norms = [model.get("blocks", {}).get(n, {}) for n in ("attn_norm", "mlp_norm")]
    if not all("mean" in n and "var" in n for n in norms):
        raise ValueError(
            "model.norm=batchnorm: PreciseBN writes the statistics into the trained decoder "
            "params; this run freezes them (train.freeze / PEFT), which is not supported"
        )
    new_model = calibrate(cfg.model, model, [put(b) for b in host_batches])
    return dataclasses.replace(state, params={**state.params, MODEL: new_model})

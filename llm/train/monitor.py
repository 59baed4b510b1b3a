"""Watching the steps: their metrics fetched in windows, checked, logged; divergence named.

The jitted step returns its metrics as device arrays without waiting for them. The loop adds
them to a `Window` and fetches the whole window at once (`flush`) every `log_every` steps and
before any evaluation or checkpoint, so the host waits for the device only then. A flush
checks every step's `finite` flag (loss, gradients and the updated params: step.py) and
raises `TrainingDiverged` at the first bad step, before anything could save its state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax

from llm.train.metrics import MetricsLogger
from llm.train.optim import param_paths


class TrainingDiverged(RuntimeError):
    """Loss, gradients or params became NaN/Inf; the last good checkpoint is untouched."""


class Silent:
    """The logger of processes other than 0: every process trains, only process 0 logs."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    message = advance = log

    def close(self) -> None:
        pass


class Window:
    """Metrics of the steps since the last flush, with the wall time they took."""

    def __init__(self, step: int) -> None:
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.t0 = time.perf_counter()
        self.first_step = step
        self.untimed = 0  # leading steps excluded from the step time (the compiling one)

    def exclude_compile(self) -> None:
        """Called after the run's first step: its time is compilation, not a step."""
        jax.block_until_ready(self.pending[-1][1])
        self.untimed, self.t0 = len(self.pending), time.perf_counter()

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.pending.append((step, metrics))


def flush(
    window: Window,
    log: MetricsLogger | Silent,
    derive: Callable[[dict[str, Any]], dict[str, Any]],
    rates: tuple[int, float, float],
) -> float:
    """Fetches pending metrics, aborts on non-finite ones, logs every step; returns last loss.

    `derive`: the loss's derived metrics (perplexity...); `rates`: (tokens per step, model
    FLOPs per token, peak FLOP/s) for throughput and MFU.
    """
    fetched = jax.device_get([m for _, m in window.pending])
    elapsed = time.perf_counter() - window.t0
    n = len(fetched)
    timing = _timing(elapsed, n - window.untimed, rates)
    for (step, _), m in zip(window.pending, fetched, strict=True):
        if not bool(m["finite"]):
            raise TrainingDiverged(diverged_message(step, m))
        record = {k: v for k, v in m.items() if k not in ("finite", "grad_finite")}
        record.update(derive(record))
        record.update(timing)
        log.log(step, record)
    last = fetched[-1]
    log.advance(n, float(last["loss"]))
    return float(last["loss"])


def _timing(elapsed: float, timed_steps: int, rates: tuple[int, float, float]) -> dict:
    """step_s, tokens_per_s and mfu of a window's timed steps; none when it holds only the
    compiling step (e.g. `log_every=1`): its time is compilation, and dividing what little
    time followed it by one step reported absurd rates (mfu 754 in one run)."""
    if timed_steps <= 0:
        return {}
    tokens_per_step, flops_per_tok, peak = rates
    step_s = elapsed / timed_steps
    tokens_per_s = tokens_per_step / step_s
    mfu = flops_per_tok * tokens_per_s / peak
    return {"step_s": step_s, "tokens_per_s": tokens_per_s, "mfu": mfu}


def diverged_message(step: int, m: dict[str, Any]) -> str:
    bad = [p for p, ok in zip(*flat_paths(m["grad_finite"]), strict=True) if not ok]
    where = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
    params = not bad and math.isfinite(m["loss"]) and not math.isfinite(m["param_norm"])
    return (
        f"non-finite training at step {step}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
        f"param_norm={m['param_norm']}, lr={m['lr']}; non-finite gradients in: {where or 'none'}"
        + ("; the update made the parameters non-finite (optim.lr too high?)" if params else "")
        + ". No checkpoint was written after the last good one."
    )


def flat_paths(tree: Any) -> tuple[list[str], list[Any]]:
    return jax.tree.leaves(param_paths(tree)), jax.tree.leaves(tree)

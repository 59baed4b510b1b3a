"""Observability: per-step metrics to JSONL, TensorBoard, W&B and a progress bar; MFU.

Sinks:
  * JSONL (`run_dir/metrics.jsonl`), always: one object per logged step or evaluation,
    the format `llm plot` and tests read.
  * TensorBoard event files (`run_dir/tb/`), via `tensorboardX`: a small, maintained writer
    that needs neither TensorFlow nor PyTorch. Skipped, with a note, when it is not installed.
  * Weights & Biases only when `train.wandb_project` is set; asking for it without `wandb`
    installed is an error, not a silent no-op.
  * tqdm progress bar on stderr with the latest loss.

MFU (model FLOPs utilisation, PaLM appendix B): achieved model FLOP/s divided by the device
peak. Model FLOPs per token come from `llm.model.accounting.train_flops_per_token` (3 x the
forward: 2 x matmul params + causal attention scores and mixing; remat not counted). The
peak is `train.peak_flops` or, when unset, measured by timing a large matmul on this device
in the compute dtype.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import to_dict


def measure_peak_flops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best observed FLOP/s of an n x n x n matmul on the default device (a practical peak)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class MetricsLogger:
    """Fans metric dicts out to the configured sinks; `close()` flushes them."""

    def __init__(self, run_dir: str | Path, cfg: Any, *, total_steps: int, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        self._tb = self._open_tensorboard() if cfg.train.tensorboard else None
        self._wandb = self._open_wandb(cfg) if cfg.train.wandb_project else None
        self._bar = None
        if cfg.train.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr)

    def _open_tensorboard(self) -> Any:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            print("note: tensorboardX not installed; no TensorBoard files", file=sys.stderr)
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def _open_wandb(self, cfg: Any) -> Any:
        try:
            import wandb
        except ImportError:
            raise RuntimeError(
                "train.wandb_project is set but wandb is not installed (pip install wandb)"
            ) from None
        return wandb.init(
            project=cfg.train.wandb_project, config=to_dict(cfg), dir=str(self.run_dir)
        )

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Writes one record; `prefix` groups TensorBoard/W&B curves ("train", "val")."""
        record = {"step": step, "split": prefix, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float)}
        scalars.pop("step")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def advance(self, n: int, loss: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def message(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl.close()


def _plain(value: Any) -> Any:
    """JSON-friendly scalar (numpy/jax scalars become Python numbers)."""
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

"""A tiny config whose every logical axis divides 8 ways, and a reference (unsharded) step.

vocab 260 (not the byte tokenizer's 259) so the vocabulary splits over a tensor axis.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from train_fixtures import SyntheticBatches, tiny_config

from llm.config import Config
from llm.model import init_params
from llm.train.build import abstract_split, make_tx
from llm.train.losses import make_loss
from llm.train.optim import make_schedule
from llm.train.state import init_state
from llm.train.step import make_train_step
from llm.train.trainable import MODEL, Trainable

# preset -> mesh overrides on 8 devices
MESHES = {
    "dp": ["mesh.data=-1"],
    "fsdp": ["mesh.data=1", "mesh.fsdp=-1"],
    "fsdp_tp": ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"],
    "tp_sp": ["mesh.data=2", "mesh.tensor=2", "mesh.sequence=2"],
}


def config(run_dir: Path | str = "unused", *overrides: str) -> Config:
    return tiny_config(run_dir, "model.vocab_size=260", *overrides)


def preset_config(preset: str, *overrides: str, run_dir: Path | str = "unused") -> Config:
    return config(run_dir, f"mesh.rules={preset}", *MESHES[preset], *overrides)


def optimizer(cfg: Config):
    """The run's optimiser over the default trained tree ({"model": every decoder param})."""
    return make_tx(cfg, abstract_split(cfg, Trainable()))


def batches(cfg: Config, n: int) -> list[dict[str, np.ndarray]]:
    it = SyntheticBatches(cfg.train.batch_size, cfg.train.seq_len, seed=1)
    return [next(it) for _ in range(n)]


def reference_run(cfg: Config, n_steps: int) -> tuple[object, list[float], object]:
    """Unsharded (one device, no shardings given): init params, `n_steps` losses, final state."""
    tx = optimizer(cfg)
    params = {MODEL: init_params(cfg.model, jax.random.key(cfg.train.seed))}
    params_host = jax.device_get(params)
    state = init_state(params, tx, seed=cfg.train.seed, spike_window=cfg.train.spike_window)
    step = make_train_step(cfg, make_loss(cfg), tx, make_schedule(cfg.optim, cfg.train.steps))
    losses = []
    for batch in batches(cfg, n_steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return params_host, losses, jax.device_get(state)

"""Typed, frozen, nested configs: `Config(model, data, optim, mesh, train, loss, eval, ...)`.

cfg = load_config("configs/tiny.yaml", ["model.n_layers=4", "optim.lr=1e-3"])
save_config(cfg, "run/config.yaml")            # read back identical with load_config
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llm.config.align import RLConfig
from llm.config.base import (
    MOVED_KEYS,
    ConfigError,
    apply_overrides,
    check,
    config_class,
    dump,
    from_dict,
    load_yaml,
    to_dict,
)
from llm.config.data import DataConfig
from llm.config.loss import LOSS_CONFIGS, CausalLMLossConfig, LossConfig
from llm.config.mesh import MeshConfig
from llm.config.model import ModelConfig
from llm.config.peft import PeftConfig
from llm.config.sections import EvalConfig, OptimConfig, TrainConfig
from llm.config.serve import ServeConfig

MOVED_KEYS.update(
    {
        "train.loss": "loss.name",
        "train.z_loss": "loss.z_loss",
        "train.label_smoothing": "loss.label_smoothing",
        "train.loss_chunk_size": "loss.chunk_size",
    }
)


@config_class
class Config:
    """Everything one run needs; saved beside every checkpoint."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    loss: LossConfig = dataclasses.field(default_factory=CausalLMLossConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)

    def __post_init__(self) -> None:
        check(
            self.train.seq_len <= self.model.max_seq_len,
            "train.seq_len",
            f"{self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML preset (or the defaults), applies dotted overrides, validates everything."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(Config, data, source=str(path) if path else "config")


def save_config(config: Config, path: str | Path) -> None:
    dump(config, path)


__all__ = [
    "LOSS_CONFIGS",
    "CausalLMLossConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "PeftConfig",
    "RLConfig",
    "ServeConfig",
    "TrainConfig",
    "config_class",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]

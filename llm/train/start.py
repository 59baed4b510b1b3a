"""How a run begins, by the run-directory rules (llm/train/run_dir.py): resumed from its
newest checkpoint that verifies, started fresh (from the seed or from `train.init_from`'s
weights, restored straight into their shards), or started over (`train.overwrite`).

    start = start_run(cfg, layout, plan, ckpt, on_restore=lambda r: batches.set_state(...))

Shared by the trainer (llm/train/loop.py) and the RL loop (llm/align/rl.py), so both resume,
refuse and start over alike. `on_restore` checks and applies what the caller keeps beside
the state (the data iterator's position, the RL loop's iteration) and may raise: it runs
before `config.yaml` is written, which happens only once every check passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.checkpoint import Checkpointer, load_model
from llm.checkpoint.manager import Restored
from llm.config import Config
from llm.model import logical_axes
from llm.sharding import rules as R
from llm.sharding.init import ShardingPlan
from llm.train.build import StateLayout, init_train_state
from llm.train.run_dir import CONFIG, refuse_fresh_start, start_over, write_config
from llm.train.state import TrainState


@dataclasses.dataclass
class Start:
    """The state a run begins with, and how it got it."""

    state: TrainState
    restored: Restored | None  # the checkpoint resumed from; None for a fresh start
    warm_from: str | None  # "path (layout, step N)" of `train.init_from`'s weights
    notes: list[str]  # what the start did to the run directory, for the run's log


def start_run(
    cfg: Config,
    layout: StateLayout,
    plan: ShardingPlan,
    ckpt: Checkpointer,
    on_restore: Callable[[Restored], None] = lambda restored: None,
) -> Start:
    """Resumes, starts fresh or starts over (see the module docstring)."""
    t, run_dir = cfg.train, Path(cfg.train.run_dir)
    restored, warm_from, notes = None, None, []
    if t.resume and not t.overwrite:
        restored = ckpt.restore(layout.abstract_sharded())
    elif not t.overwrite:
        refuse_fresh_start(run_dir, ckpt)
    if restored is None:
        loaded = _initial_weights(cfg, plan)
        state = init_train_state(cfg, layout, None if loaded is None else loaded.params)
        if loaded is not None:
            warm_from = f"{loaded.path} ({loaded.layout}, step {loaded.step})"
        if t.overwrite and (gone := start_over(run_dir, ckpt)):
            notes.append(f"train.overwrite: deleted the old run's {', '.join(gone)}")
    else:
        on_restore(restored)  # refuses another stream's or loop's state
        state = restored.state
        if restored.unreadable:
            moved = ckpt.set_aside(restored.unreadable)
            notes.append(f"unreadable checkpoints moved to {', '.join(map(str, moved))}")
    step = 0 if restored is None else restored.step
    if step < t.steps and (kept := write_config(cfg, run_dir, step)):
        notes.append(f"{CONFIG} changed at step {step}; the old one is kept as {kept}")
    return Start(state, restored, warm_from, notes)


def _initial_weights(cfg: Config, plan: ShardingPlan) -> Any:
    """None (fresh init) or the `train.init_from` model, restored into its shards."""
    t = cfg.train
    if t.init_from is None:
        return None
    specs = R.param_specs(plan.rules, logical_axes(cfg.model))
    return load_model(t.init_from, t.init_step, shardings=R.named(plan.mesh, specs))

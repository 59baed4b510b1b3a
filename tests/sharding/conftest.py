"""Shared tiny setup for the sharding tests (8 simulated CPU devices, see tests/conftest.py).

Compiles are the cost here, so the unsharded reference and one sharded initial state are
built once per session and shared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
sys.path.insert(0, str(Path(__file__).parent))

from sharding_fixtures import config, reference_run


@pytest.fixture(scope="session")
def reference():
    """(init params, per-step losses, final state) of the unsharded SGD-momentum run."""
    return reference_run(config("unused", "optim.name=sgd"), 3)


@pytest.fixture(scope="session")
def fsdp_state():
    """(cfg, plan, layout, state): an AdamW state created in its shards on fsdp=8."""
    import jax
    from sharding_fixtures import preset_config

    from llm.sharding.init import make_plan
    from llm.sharding.mesh import make_mesh
    from llm.train.build import init_train_state, state_layout
    from llm.train.trainable import Trainable

    cfg = preset_config("fsdp")
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    layout = state_layout(cfg, plan, Trainable())
    state = init_train_state(cfg, layout)
    return cfg, plan, layout, jax.block_until_ready(state)

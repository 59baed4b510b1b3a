"""Sharded training equals unsharded training, for every rules preset, on 8 CPU devices.

Per preset: two steps' losses and the updated params and optimizer state match the
single-device run at float32 rounding level, every leaf carries its declared sharding after
the steps, and the step compiled exactly once.

The optimizer here is SGD with momentum (plus weight decay): its update is linear in the
gradient, so the only difference between layouts, the order of float32 sums across shards,
stays at rounding level. Adam divides by sqrt(v): on entries whose gradient is near zero it
turns a 1-ulp difference in summation order into a visibly different update, which is not a
sharding bug (Adam's state shardings are checked in test_init.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_fixtures import MESHES, batches, preset_config

from llm.data.device import to_device
from llm.sharding.constraints import with_activation_sharding
from llm.sharding.init import batch_shardings, make_plan
from llm.sharding.mesh import make_mesh
from llm.train.build import state_layout
from llm.train.losses import make_loss
from llm.train.optim import make_schedule
from llm.train.state import init_state
from llm.train.step import make_train_step
from llm.train.trainable import Trainable


@pytest.mark.parametrize("preset", sorted(MESHES))
def test_sharded_steps_match_unsharded(preset, reference):
    ref_params, ref_losses, ref_state = reference
    cfg = preset_config(preset, "optim.name=sgd")
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    layout = state_layout(cfg, plan, Trainable())
    tx, shardings = layout.tx, layout.shardings
    start = init_state(ref_params, tx, seed=cfg.train.seed, spike_window=cfg.train.spike_window)
    state = jax.device_put(start, shardings)
    loss = make_loss(cfg)
    put = batch_shardings(plan, loss.batch_axes)
    schedule = make_schedule(cfg.optim, cfg.train.steps)
    step = make_train_step(
        cfg,
        with_activation_sharding(loss, plan.mesh, plan.rules),
        tx,
        schedule,
        state_shardings=shardings,
        batch_sharding=put,
    )
    losses = []
    for batch in batches(cfg, len(ref_losses)):
        state, metrics = step(state, to_device(batch, put))
        losses.append(float(metrics["loss"]))

    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert step._cache_size() == 1, "the sharded step compiled more than once"

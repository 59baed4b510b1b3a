"""Expert parallelism: an MoE model's loss and gradients on 8 simulated devices with the
expert mesh axis (alone, and beside data) equal one device's, and GSPMD lays the capacity
dispatch out as an all-to-all (llm/sharding/rules.py, llm/model/moe.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_fixtures import batches, config

from llm.data.device import to_device
from llm.model import init_params
from llm.sharding.constraints import with_activation_sharding
from llm.sharding.init import batch_shardings, make_plan
from llm.sharding.mesh import make_mesh
from llm.train.losses import make_loss
from llm.train.trainable import MODEL

# 8 experts so each device of expert=8 holds one; capacity 1.0 drops some tokens, which a
# different layout must drop identically; z-loss on so both aux losses cross the mesh
MOE = ["model.n_experts=8", "model.experts_per_token=2", "model.activation=swiglu",
       "model.moe_z_weight=1e-3", "model.n_layers=1"]  # fmt: skip
PATHS = {"capacity": ["model.capacity_factor=1.0"], "dense": []}
MESHES = {
    "expert8": ["mesh.data=1", "mesh.expert=8"],
    "data2_expert4": ["mesh.data=2", "mesh.expert=4"],
    "fsdp2_expert4": ["mesh.rules=fsdp", "mesh.data=1", "mesh.fsdp=2", "mesh.expert=4"],
}


def _loss_and_grads(cfg, params, batch, plan=None):
    """Mean loss (cross-entropy + aux) and its gradient, jitted; sharded when `plan` is given
    (then also a function returning the compiled program's text)."""
    loss = make_loss(cfg)

    def mean_loss(p, b):
        out = loss({MODEL: p}, {}, b, None)
        return out.total / out.weight

    fn = jax.value_and_grad(mean_loss)
    if plan is None:
        return jax.jit(fn)(params, batch), None
    put = batch_shardings(plan, loss.batch_axes)
    fn = jax.jit(
        with_activation_sharding(fn, plan.mesh, plan.rules),
        in_shardings=(plan.params, put),
    )
    placed = jax.device_put(params, plan.params), to_device(batch, put)
    return fn(*placed), lambda: fn.lower(*placed).compile().as_text()


_UNSHARDED: dict = {}


def unsharded(path: str):
    """(params, batch, (loss, grads)) of the one-device run of `path`, computed once."""
    if path not in _UNSHARDED:
        cfg = config("unused", *MOE, *PATHS[path])
        params = init_params(cfg.model, jax.random.key(0))
        batch = batches(cfg, 1)[0]
        _UNSHARDED[path] = params, batch, _loss_and_grads(cfg, params, batch)[0]
    return _UNSHARDED[path]


# two (path, mesh) pairs run by default; the other four are marked slow (~8 s of compiles each)
FAST = {("capacity", "expert8"), ("dense", "data2_expert4")}
CASES = [
    pytest.param(path, mesh, marks=() if (path, mesh) in FAST else pytest.mark.slow)
    for path in PATHS
    for mesh in MESHES
]


@pytest.mark.parametrize(("path", "mesh"), CASES)
def test_expert_parallel_equals_one_device(path, mesh):
    params, batch, (want_loss, want_grads) = unsharded(path)
    cfg = config("unused", *MOE, *PATHS[path], *MESHES[mesh])
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    up_spec = plan.param_specs["blocks"]["mlp"]["up"]["w"]
    assert up_spec[1] == "expert", up_spec  # [layers, E, D, F]: experts split over devices
    (loss, grads), compiled_text = _loss_and_grads(cfg, params, batch, plan)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-7)
    shard = grads["blocks"]["mlp"]["up"]["w"].addressable_shards[0].data.shape
    assert shard[1] == 8 // cfg.mesh.expert  # the gradient stays split over experts too
    if path == "capacity" and mesh == "expert8":
        # batch split over expert -> experts split over expert: GSPMD's all-to-all
        assert "all-to-all" in compiled_text()

"""Save on one mesh, restore onto another shape and another device count (orbax reshards)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_fixtures import preset_config

from llm.checkpoint import Checkpointer
from llm.sharding.init import make_plan
from llm.sharding.mesh import make_mesh
from llm.train.build import state_layout
from llm.train.trainable import Trainable


@pytest.fixture(scope="module")
def saved(fsdp_state, tmp_path_factory):
    _, _, _, state = fsdp_state
    ckpt = Checkpointer(tmp_path_factory.mktemp("run"), keep=1, keep_best=0, async_save=False)
    ckpt.save(state, data_state={"index": 3}, meta={"note": "fsdp=8"})
    ckpt.wait()
    return ckpt, jax.device_get(state)


@pytest.mark.parametrize(
    ("preset", "overrides", "n_devices"),
    [
        ("fsdp_tp", ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"], 8),  # other mesh shape
        ("fsdp", ["mesh.data=1", "mesh.fsdp=-1"], 4),  # fewer devices
        ("tp_sp", ["mesh.data=1", "mesh.tensor=2", "mesh.sequence=1"], 2),  # other preset
    ],
)
def test_restore_onto_another_mesh(saved, preset, overrides, n_devices):
    ckpt, want = saved
    cfg = preset_config("fsdp", f"mesh.rules={preset}", *overrides)
    plan = make_plan(cfg, make_mesh(cfg.mesh, jax.devices()[:n_devices]))
    target = state_layout(cfg, plan, Trainable()).abstract_sharded()
    restored = ckpt.restore(target)
    assert restored.data_state == {"index": 3}
    for x, t, w in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(target), jax.tree.leaves(want), strict=True
    ):
        assert x.sharding.is_equivalent_to(t.sharding, x.ndim), (x.sharding, t.sharding)
        assert len(x.sharding.device_set) == n_devices
        np.testing.assert_array_equal(np.asarray(x), w)

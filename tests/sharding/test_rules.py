"""Validation before compile: clear errors for meshes and layouts that cannot work."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P
from sharding_fixtures import config, preset_config

from llm.config import ConfigError
from llm.config.mesh import MESH_AXES
from llm.sharding.init import make_plan
from llm.sharding.mesh import MeshError, make_mesh, resolve_shape
from llm.sharding.rules import PRESETS, ShardingError, get_rules, mesh_spec


def test_resolve_fills_minus_one_and_multiplies_dcn():
    cfg = config("unused", "mesh.fsdp=-1", "mesh.data=1", "mesh.tensor=4", "mesh.dcn_data=2").mesh
    assert resolve_shape(cfg, 256) == {
        "data": 2,
        "fsdp": 32,
        "tensor": 4,
        "sequence": 1,
        "expert": 1,
    }


@pytest.mark.parametrize(
    ("overrides", "n", "message"),
    [
        (["mesh.data=3"], 8, "multiply to 3, which does not divide 8"),
        (["mesh.data=2", "mesh.fsdp=2"], 8, "multiply to 4 but there are 8"),
        (["mesh.dcn_data=3"], 8, "DCN sizes"),
    ],
)
def test_bad_mesh_sizes_fail_with_the_sizes(overrides, n, message):
    with pytest.raises(MeshError, match=message):
        resolve_shape(config("unused", *overrides).mesh, n)


def test_two_minus_ones_rejected_by_config():
    with pytest.raises(ConfigError, match=r"mesh\.dcn_data: at most one mesh axis may be -1"):
        config("unused", "mesh.dcn_data=-1", "mesh.dcn_fsdp=-1")


def test_indivisible_param_names_its_path():
    cfg = config(
        "unused",
        "model.vocab_size=259",
        "mesh.rules=fsdp_tp",
        "mesh.data=1",
        "mesh.fsdp=4",
        "mesh.tensor=2",
    )
    with pytest.raises(ShardingError, match=r"token_embed: dimension 0 of shape \(259, 32\)"):
        make_plan(cfg, make_mesh(cfg.mesh))


def test_indivisible_batch_and_unused_axis():
    cfg = preset_config("fsdp", "train.batch_size=4", "train.grad_accum=1")
    with pytest.raises(ShardingError, match="batch_size=4 is not divisible by the 8 batch"):
        make_plan(cfg, make_mesh(cfg.mesh))
    cfg = config("unused", "mesh.rules=fsdp", "mesh.data=4", "mesh.tensor=2")
    with pytest.raises(ShardingError, match=r"\['tensor=2'\] are not used by rules preset 'fsdp'"):
        make_plan(cfg, make_mesh(cfg.mesh))


def test_rules_table_is_complete_and_specs_translate():
    for table in PRESETS.values():
        assert all(a in MESH_AXES for axes in table.values() for a in axes)
    rules = get_rules("fsdp_tp")
    assert mesh_spec(rules, ("layers", "embed", "mlp")) == P(None, "fsdp", "tensor")
    with pytest.raises(ShardingError, match="'embd' is not in the rules"):
        mesh_spec(rules, ("embd",))
    with pytest.raises(ShardingError, match="unknown rules preset 'zero3'"):
        get_rules("zero3")

"""Activation constraints: active on CPU, identity without rules, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharding_fixtures import preset_config

from llm.sharding.constraints import activation_sharding, constrain, with_activation_sharding
from llm.sharding.init import make_plan
from llm.sharding.mesh import make_mesh
from llm.sharding.rules import ShardingError


@pytest.fixture(scope="module")
def plan():
    cfg = preset_config("tp_sp")
    return make_plan(cfg, make_mesh(cfg.mesh))


def _f(x_BLD):
    return constrain(jnp.sin(x_BLD), ("batch", "length", "act_embed")) * 2


def test_constraint_is_in_the_compiled_cpu_program(plan):
    x = jnp.ones((4, 16, 8))
    f = jax.jit(with_activation_sharding(_f, plan.mesh, plan.rules))
    out = f(x)
    # the only source of this layout is the constraint: x was committed to one device
    want = NamedSharding(plan.mesh, P(("data", "fsdp"), "sequence", None))
    assert out.sharding.is_equivalent_to(want, 3), out.sharding
    assert "sharding={devices=" in f.lower(x).as_text(dialect="hlo")


def test_identity_without_rules_and_errors_with_them(plan):
    x = jnp.ones((4, 16, 8))
    assert jax.jit(_f)(x).sharding.is_fully_replicated
    with activation_sharding(plan.mesh, plan.rules):
        with pytest.raises(ShardingError, match="axis 'length' of size 15 is not divisible"):
            constrain(jnp.ones((4, 15, 8)), ("batch", "length", "act_embed"))
        with pytest.raises(ShardingError, match="names 2 axes"):
            constrain(x, ("batch", "length"))

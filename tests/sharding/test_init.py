"""Sharded initialisation: the declared layout, 1/N bytes per device, the reference values."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from sharding_fixtures import preset_config

from llm.sharding.init import make_plan, shard_bytes
from llm.sharding.mesh import make_mesh
from llm.train.build import state_layout
from llm.train.trainable import MODEL, Trainable

# Written by hand from the fsdp_tp row of the rules table (embed -> fsdp; vocab, heads,
# kv_heads, mlp -> tensor; layers, head_dim, position -> replicated) and the logical names
# in llm/model (layers.py, attention.py, mlp.py, transformer.py).
GOLDEN_FSDP_TP = {
    "token_embed": P("tensor", "fsdp"),
    "pos_embed": P(None, "fsdp"),
    "blocks": {
        "attn": {
            "q": {"w": P(None, "fsdp", "tensor", None)},
            "k": {"w": P(None, "fsdp", "tensor", None)},
            "v": {"w": P(None, "fsdp", "tensor", None)},
            "o": {"w": P(None, "tensor", None, "fsdp")},
        },
        "attn_norm": {"scale": P(None, "fsdp"), "bias": P(None, "fsdp")},
        "mlp": {"up": {"w": P(None, "fsdp", "tensor")}, "down": {"w": P(None, "tensor", "fsdp")}},
        "mlp_norm": {"scale": P(None, "fsdp"), "bias": P(None, "fsdp")},
    },
    "final_norm": {"scale": P("fsdp"), "bias": P("fsdp")},
}


def test_golden_param_and_adam_state_specs_fsdp_tp():
    cfg = preset_config("fsdp_tp")
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    assert plan.param_specs == GOLDEN_FSDP_TP
    specs = state_layout(cfg, plan, Trainable()).specs
    assert specs.params == {MODEL: GOLDEN_FSDP_TP} and specs.frozen == {}
    adam = specs.opt_state[1][0]  # chain(clip, adamw) -> (scale_by_adam, decay, schedule)
    assert adam.mu == {MODEL: GOLDEN_FSDP_TP} and adam.nu == {MODEL: GOLDEN_FSDP_TP}
    assert adam.count == P() and specs.step == P() and specs.rng == P()
    assert plan.batch.spec == P(("data", "fsdp", "expert"), None)


def test_tp_sp_splits_batch_length_and_heads():
    cfg = preset_config("tp_sp")
    plan = make_plan(cfg, make_mesh(cfg.mesh))
    assert plan.batch.spec == P(("data", "fsdp", "expert"), "sequence")
    assert plan.param_specs["blocks"]["attn"]["q"]["w"] == P(None, None, "tensor", None)
    assert plan.param_specs["token_embed"] == P("tensor", None)


def test_sharded_init_equals_reference_and_splits_8_ways(fsdp_state, reference):
    _, plan, _, state = fsdp_state
    ref_params = reference[0]
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)  # partitionable threefry: exact
    n = plan.mesh.devices.size
    for tree in (state.params, state.opt_state):
        per_device, total = shard_bytes(tree)
        # every param (and Adam moment) has an embed axis of 32 = 8 x 4: exactly 1/8 each,
        # plus the replicated int32 step counts in the optimizer state (4 bytes each)
        replicated = sum(x.nbytes for x in jax.tree.leaves(tree) if x.sharding.is_fully_replicated)
        assert per_device == (total - replicated) // n + replicated
        assert replicated <= 8
    specs = jax.tree.map(lambda x: x.sharding.spec, state.params[MODEL])
    assert specs["blocks"]["mlp"]["up"]["w"] == P(None, "fsdp", None)

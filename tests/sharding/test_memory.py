"""The abstract memory plan: exact for params/optimizer state, full-size configs in seconds."""

from __future__ import annotations

import jax
import pytest

from llm.config import load_config
from llm.sharding.init import shard_bytes
from llm.sharding.rules import ShardingError
from llm.train.build import memory_plan as plan
from llm.train.build import memory_report as report
from llm.train.trainable import Trainable

LLAMA3_8B_PARAMS = 8_030_261_248  # from configs/llama3_8b.yaml's comment (Meta's count)


def test_plan_equals_the_real_shards(fsdp_state):
    cfg, mesh_plan, _, state = fsdp_state
    p = plan(cfg, mesh_plan.mesh.devices.size)
    assert p.params == shard_bytes(state.params)[0]
    assert p.optimizer == shard_bytes(state.opt_state)[0]
    assert p.grads == p.params  # float32 params: gradients are the same size
    assert p.frozen == 0


def test_frozen_params_cost_weights_only(fsdp_state):
    cfg, mesh_plan, _, _ = fsdp_state
    n = mesh_plan.mesh.devices.size
    full = plan(cfg, n)
    part = plan(cfg, n, Trainable(freeze=("token_embed",)))
    embed = cfg.model.vocab_size * cfg.model.d_model * 4 // n  # float32, split 8 ways on fsdp
    assert (part.params, part.frozen) == (full.params - embed, embed)
    assert part.grads == part.params
    assert part.optimizer == full.optimizer - 2 * embed  # no Adam mu / nu for the embedding


def test_llama3_8b_on_256_devices_is_one_256th():
    cfg = load_config(
        "configs/llama3_8b.yaml",
        ["mesh.data=1", "mesh.fsdp=-1", "train.batch_size=256", "train.grad_accum=16"],
    )
    p = plan(cfg, 256)
    assert p.mesh_shape["fsdp"] == 256
    assert p.params == 4 * LLAMA3_8B_PARAMS // 256  # float32, every dim divides by 256
    assert p.optimizer == 2 * p.params + 8  # Adam's mu and nu + two replicated int32 counts
    with pytest.raises(ShardingError, match="batch_size=256 is not divisible by the 512"):
        plan(cfg, 512)  # 512 batch shards for 256 rows
    text = report(cfg, 256)
    assert "fsdp=256" in text and "trained params per device (float32)" in text
    assert jax.device_count() == 8  # computed abstractly: 256 devices were never needed


def test_tensor_and_sequence_shards_cut_activations():
    base = ["mesh.data=1", "train.batch_size=8", "train.grad_accum=1", "mesh.rules=tp_sp"]
    cfg = lambda *o: load_config("configs/llama3_8b.yaml", [*base, *o])  # noqa: E731
    acts = [
        plan(cfg(f"mesh.tensor={8 // c}", f"mesh.sequence={c}"), 8).activations for c in (1, 2, 4)
    ]
    # tensor parallelism leaves the norm/residual activations whole; the sequence axis splits
    # them too, so trading tensor for sequence shards lowers the estimate
    assert acts[0] > acts[1] > acts[2]
    flash = plan(cfg("mesh.tensor=8", "mesh.sequence=1", "model.attention_impl=pallas"), 8)
    assert flash.activations < acts[0]  # no stored s x s scores

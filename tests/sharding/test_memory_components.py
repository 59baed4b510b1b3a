"""The memory plan per component: policy, reference, heads and adapters, computed abstractly.

An alignment run holds more than one model's worth of weights (a reference policy, a value
head); the plan must say what each costs before anything is allocated.
"""

from __future__ import annotations

import jax
from train_fixtures import tiny_config

from llm.model import abstract_params
from llm.sharding.init import shard_bytes
from llm.sharding.memory import UNOWNED
from llm.train.build import memory_plan, memory_report
from llm.train.losses import CausalLMLoss
from llm.train.trainable import MODEL, REFERENCE


class WithReference(CausalLMLoss):
    """Causal LM loss that declares a reference policy, as DPO/PPO/GRPO do."""

    reference = True


def _sums(p):
    fields = ("trained", "frozen", "grads", "optimizer")
    return tuple(sum(getattr(c, f) for c in p.components) for f in fields)


def _by_name(p):
    return {c.name: c for c in p.components}


def test_components_sum_to_the_totals_and_equal_the_real_shards(fsdp_state):
    cfg, mesh_plan, _, state = fsdp_state
    p = memory_plan(cfg, mesh_plan.mesh.devices.size)
    assert _sums(p) == (p.params, p.frozen, p.grads, p.optimizer)
    model = _by_name(p)[MODEL]
    assert model.trained == shard_bytes(state.params[MODEL])[0]  # the arrays really created
    assert model.optimizer == 2 * model.trained  # AdamW's mu and nu mirror the float32 params
    assert _by_name(p)[UNOWNED].optimizer == p.optimizer - model.optimizer  # the step counts


def test_reference_doubles_the_decoder_under_full_finetuning(tmp_path):
    cfg = tiny_config(tmp_path)
    base = memory_plan(cfg, 1)
    ref = memory_plan(cfg, 1, loss=WithReference(cfg.model))
    comps = _by_name(ref)
    assert REFERENCE not in _by_name(base)
    assert comps[REFERENCE].frozen == comps[MODEL].trained == base.params > 0
    frozen_only = (comps[REFERENCE].trained, comps[REFERENCE].grads, comps[REFERENCE].optimizer)
    assert frozen_only == (0, 0, 0)  # weights only: no gradient, no optimizer state
    assert (ref.params, ref.grads, ref.optimizer) == (base.params, base.grads, base.optimizer)
    assert ref.frozen == base.frozen + base.params
    assert _sums(ref) == (ref.params, ref.frozen, ref.grads, ref.optimizer)


def test_reference_under_lora_costs_the_adapter_not_a_second_base(tmp_path):
    cfg = tiny_config(tmp_path, "peft.method=lora", "peft.rank=2")
    base = memory_plan(cfg, 1)
    ref = memory_plan(cfg, 1, loss=WithReference(cfg.model))
    comps = _by_name(ref)
    lora = comps["lora"]
    assert comps[REFERENCE].frozen == lora.trained > 0  # the adapter's trained A and B
    assert comps[REFERENCE].frozen < comps[MODEL].frozen / 10  # nowhere near a decoder
    assert ref.frozen - base.frozen == lora.trained
    decoder = 4 * sum(x.size for x in jax.tree.leaves(abstract_params(cfg.model)))
    assert comps[MODEL].frozen == _by_name(base)[MODEL].frozen == decoder  # float32, once
    assert _sums(ref) == (ref.params, ref.frozen, ref.grads, ref.optimizer)


def test_the_dry_run_table_lists_every_component(tmp_path):
    cfg = tiny_config(tmp_path, "peft.method=lora", "peft.rank=2")
    text = memory_report(cfg, 1, loss=WithReference(cfg.model))
    assert "total per device" in text  # the existing table is kept
    table = text.split("per component, per device\n")[1].splitlines()
    assert table[0].split() == ["component", "trained", "frozen", "gradients", "optimizer", "total"]
    assert [row.split()[0] for row in table[1:]] == ["lora", MODEL, REFERENCE, "(optimizer"]
    reference_row = table[3].split()
    assert reference_row[1:3] == ["0", "B"]  # nothing trained: weights only


def test_an_rl_reward_model_is_counted_whole_beside_the_state(tmp_path):
    from llm.config import save_config

    rm_dir = tmp_path / "rm"
    (rm_dir / "checkpoints").mkdir(parents=True)  # a run directory: config.yaml + checkpoints/
    rm_cfg = tiny_config(tmp_path, "model.d_model=64", "model.n_heads=4")
    save_config(rm_cfg, rm_dir / "config.yaml")
    decoder = 4 * sum(x.size for x in jax.tree.leaves(abstract_params(rm_cfg.model)))
    args = ("loss.name=grpo", "data.format=prompts", f"rl.reward_model={rm_dir}")
    without = memory_plan(tiny_config(tmp_path, *args), 1)
    assert without.outside == 0  # rl.rewards does not name "model": the run never loads it
    p = memory_plan(tiny_config(tmp_path, *args, "rl.rewards=[arithmetic,model]"), 1)
    assert p.outside == _by_name(p)["reward_model"].frozen == decoder + 4 * (64 + 1)  # + head
    assert p.total == without.total + p.outside
    assert sum(c.frozen for c in p.components) == p.frozen + p.outside
    assert "outside the state (reward model, whole)" in memory_report(
        tiny_config(tmp_path, *args, "rl.rewards=[arithmetic,model]"), 1
    )


def test_a_dpo_run_plans_its_reference_and_both_sides_of_each_pair(tmp_path):
    base = memory_plan(tiny_config(tmp_path), 1)
    dpo = memory_plan(tiny_config(tmp_path, "loss.name=dpo", "data.format=preference"), 1)
    assert _by_name(dpo)[REFERENCE].frozen == base.params  # DPO declares `reference = True`
    assert (dpo.rows_per_example, dpo.activations) == (2, 2 * base.activations)  # [B, 2, L]


def test_a_reward_model_run_plans_its_scalar_head(tmp_path):
    p = memory_plan(tiny_config(tmp_path, "loss.name=reward", "data.format=preference"), 1)
    head = _by_name(p)["reward_head"]
    d = tiny_config(tmp_path).model.d_model
    assert (head.trained, head.grads, head.optimizer) == (4 * (d + 1), 4 * (d + 1), 8 * (d + 1))
    assert REFERENCE not in _by_name(p)  # a reward model scores against no reference


def test_the_rl_rollout_phase_is_planned_as_the_engine_holds_it(tmp_path):
    from llm.inference import Engine
    from llm.model import init_params

    rl = ("rl.prompts=3", "rl.group_size=4", "rl.eval_prompts=5")  # 12 rows -> a batch of 16
    cfg = tiny_config(tmp_path, "loss.name=grpo", "data.format=prompts", *rl)
    p = memory_plan(cfg, 1)
    engine = Engine(cfg.model, init_params(cfg.model, jax.random.key(0)), max_len=cfg.train.seq_len)
    held = jax.tree.leaves((engine.params["blocks"], engine.empty_state(16).cache))
    assert p.rollout == sum(x.nbytes for x in held)  # the real engine's per-layer weights + cache
    assert p.rollout_total == p.params + p.frozen + p.optimizer + p.rollout
    assert p.total == p.params + p.frozen + p.grads + p.optimizer + p.activations  # training
    assert (
        memory_plan(tiny_config(tmp_path, "loss.name=dpo", "data.format=preference"), 1).rollout
        == 0
    )

"""The RL loop (llm/align/rl.py) end to end with configs/grpo_tiny.yaml, and its refusals.

The preset's policy is a random 2-layer byte model and its reward "the completion starts with
a digit" (10 of 259 bytes): GRPO must raise it, with a fixed seed, by the stated amount.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from llm.align import rl as rl_loop
from llm.align.rl import for_rollouts, iteration_plan, train_rl
from llm.cli import main
from llm.config import load_config
from llm.data.prompts import arithmetic_records
from llm.train.losses import make_loss
from llm.train.losses.rl import RLLoss

PRESET = Path(__file__).parents[2] / "configs" / "grpo_tiny.yaml"


def _cfg(tmp_path, *overrides):
    corpus = tmp_path / "arith.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if not corpus.exists():
        corpus.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_records(200, 0)))
    return load_config(
        str(PRESET), [f"data.corpus={corpus}", f"train.run_dir={tmp_path / 'run'}", *overrides]
    )


def _records(run_dir, split):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_grpo_tiny_raises_the_reward(tmp_path, capsys):
    result = train_rl(_cfg(tmp_path))
    assert result["step"] == 40 and result["iteration"] == 20 and result["exit_status"] == 0
    rollouts = _records(result["run_dir"], "rollout")
    val = _records(result["run_dir"], "val")
    rewards = [r["reward"] for r in rollouts]
    # measured with this seed (configs/grpo_tiny.yaml's header): sampled reward 0.03, 0.05 in
    # the first two iterations -> 0.97, 0.91, 0.91 in the last three; held-out greedy 0 -> 1
    assert np.mean(rewards[:2]) < 0.1 and np.mean(rewards[-3:]) > 0.7
    assert [r["step"] for r in val] == [0, 20, 40]
    assert val[0]["reward"] <= 0.1 and val[-1]["reward"] >= 0.8
    assert all(r["sample_logp_gap"] < 1e-4 for r in rollouts)  # engine == training forward
    for key in ("kl", "completion_tokens", "gen_s", "train_s", "gen_share",
                "rollout_tokens_per_s", "reward_format"):  # fmt: skip
        assert key in rollouts[-1]
    assert rollouts[0]["kl"] == 0.0 and rollouts[-1]["kl"] > 0  # the policy left the reference
    assert len(_records(result["run_dir"], "train")) == 40  # every optimiser step logged
    assert "reference" in capsys.readouterr().err  # the memory plan, with the reference
    out = tmp_path / "reward.png"
    assert main(["plot", result["run_dir"], "--metric", "reward", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
    """An error at the start of iteration 12 (after the checkpoint at step 20) first saves
    the iteration boundary, step 24; the run resumes there and ends where the uninterrupted
    run ends, to the bit (prompt order, seeds and loss state restored)."""
    whole = train_rl(_cfg(tmp_path / "a"))
    real, calls = rl_loop._train_iteration, []

    def failing(tr, log, rates):
        calls.append(tr.iteration)
        if tr.iteration == 12:
            raise RuntimeError("killed")
        return real(tr, log, rates)

    monkeypatch.setattr(rl_loop, "_train_iteration", failing)
    with pytest.raises(RuntimeError, match="killed"):
        train_rl(_cfg(tmp_path / "b"))
    monkeypatch.setattr(rl_loop, "_train_iteration", real)
    resumed = train_rl(_cfg(tmp_path / "b"))
    assert resumed["resumed_from"] == 24 and calls == list(range(13))
    for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(resumed["params"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_iteration_plan_refuses_uneven_splits(tmp_path):
    assert iteration_plan(_cfg(tmp_path)) == (2, 20)
    with pytest.raises(ValueError, match=r"not a multiple of train\.batch_size=48"):
        iteration_plan(_cfg(tmp_path, "train.batch_size=48"))
    with pytest.raises(ValueError, match=r"train\.steps=15 is not a whole number of iterations"):
        iteration_plan(_cfg(tmp_path, "train.steps=15"))


def test_rollout_settings_reach_the_loss(tmp_path):
    cfg = _cfg(tmp_path, "rl.temperature=0.7", "rl.max_new_tokens=5")
    loss = for_rollouts(make_loss(cfg), cfg.rl)
    assert loss.temperature == 0.7 and loss.max_new_tokens == 5


@dataclasses.dataclass(frozen=True)
class _NoTemperature(RLLoss):
    """An RL loss that scores under softmax(logits) only."""

    name = "no_temperature"

    def __call__(self, params, frozen, batch, key):
        raise AssertionError("never trained")

    def score_rollouts(self, params, frozen, rows):
        raise AssertionError("never scored")

    def training_batch(self, rollouts, scored, state):
        raise AssertionError("never batched")


def test_a_loss_without_temperature_is_refused_at_other_temperatures(tmp_path):
    cfg = _cfg(tmp_path, "rl.temperature=0.7")
    with pytest.raises(ValueError, match="has no temperature field"):
        for_rollouts(_NoTemperature(), cfg.rl)
    assert isinstance(for_rollouts(_NoTemperature(), _cfg(tmp_path).rl), _NoTemperature)


def test_a_loss_that_is_not_rl_is_refused(tmp_path):
    sft = make_loss(load_config(None, ["loss.name=sft"]))
    with pytest.raises(ValueError, match="loss 'sft' is not an RL loss"):
        train_rl(_cfg(tmp_path), loss=sft)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["peft.method=prompt"], "changes the forward pass"),
        (["data.format=chat"], "set data.format=prompts"),
        (["train.seq_len=40"], "raise train.seq_len or shorten the prompts"),
        (["rl.rewards=[arithmetic,length]"], r"\['length'\] not registered"),
        (["train.layer_stats=true"], "the RL loop does not log per-layer statistics"),
    ],
)
def test_bad_runs_are_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_rl(_cfg(tmp_path, *overrides))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

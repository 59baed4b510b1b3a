"""Best-of-n sampling and rejection-sampling data (llm/align/best_of_n.py, `llm best-of-n`)."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from reward_fixtures import PairBatches, toy_records, val_batches
from train_fixtures import tiny_config

from llm.align.best_of_n import (
    best_of_n,
    engine_for,
    sample_seed,
    summary,
    write_preferences,
    write_sft,
)
from llm.align.reward_model import RewardModel
from llm.cli import main
from llm.inference import Engine
from llm.inference.sampling import SamplingParams
from llm.model import init_params
from llm.tokenizers import load_tokenizer
from llm.train.loop import train

TOK = load_tokenizer("byte")
PROMPTS = ["line?", "to be", "or not", "a sea"]
HOT = SamplingParams(temperature=1.5, seed=11)
KW = dict(params=HOT, max_new_tokens=12, batch_size=6)


def vowels(prompts, completions):
    """A programmatic reward: the fraction of vowels in the completion."""
    del prompts
    return np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in completions])


@pytest.fixture(scope="module")
def engine():
    cfg = tiny_config("x", "model.max_seq_len=64")
    return Engine(cfg.model, init_params(cfg.model, jax.random.key(0)), TOK)


def test_best_is_the_argmax_and_beats_the_first_sample(engine):
    picks = best_of_n(engine, PROMPTS, vowels, 6, **KW)
    for p in picks:
        assert len(p.samples) == 6 and len(set(p.samples)) > 1  # sampled, not one text
        np.testing.assert_allclose(p.scores, vowels(None, p.samples), rtol=1e-6)  # recomputed
        assert p.best == p.samples[int(np.argmax(vowels(None, p.samples)))]
    s = summary(picks)
    assert s["mean_best"] >= s["mean_all"] >= 0 and s["mean_best"] > s["mean_first"]


def test_n_1_is_the_first_sample_of_any_n_and_runs_repeat(engine):
    one = best_of_n(engine, PROMPTS, vowels, 1, **KW)
    four = best_of_n(engine, PROMPTS, vowels, 4, **KW)
    again = best_of_n(engine, PROMPTS, vowels, 4, **KW)
    assert [p.best for p in one] == [p.samples[0] for p in four]  # the seed ignores n
    s = summary(one)
    assert s["mean_best"] == s["mean_first"]
    assert [p.samples for p in four] == [p.samples for p in again]
    other = best_of_n(engine, PROMPTS, vowels, 4, **{**KW, "params": SamplingParams(1.5, seed=12)})
    assert [p.samples for p in other] != [p.samples for p in four]
    assert sample_seed(11, 1, 0) == sample_seed(11, 0, 1024)  # prompt i starts at i * MAX_N


def test_rejection_sampling_and_preference_files(engine, tmp_path):
    picks = best_of_n(engine, PROMPTS, vowels, 4, **KW)
    assert write_sft(picks, tmp_path / "sft.jsonl") == 4
    chats = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [c["messages"][1]["content"] for c in chats] == [p.best for p in picks]
    report = write_preferences(picks, tmp_path / "pairs.jsonl")
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert report.pairs == len(pairs) and report.pairs + report.skipped_ties == 4
    for pair in pairs:
        assert pair["score_chosen"] > pair["score_rejected"]
    flat = write_preferences(best_of_n(engine, PROMPTS, lambda p, c: np.zeros(len(c)), 3, **KW),
                             tmp_path / "none.jsonl")  # fmt: skip
    assert (flat.pairs, flat.skipped_ties) == (0, 4)  # all ties: counted, none written


def test_a_scorer_of_the_wrong_shape_is_refused(engine):
    with pytest.raises(ValueError, match=r"returned shape \(2,\), not \(8,\)"):
        best_of_n(engine, PROMPTS, lambda p, c: np.zeros(2), 2, **KW)


@pytest.mark.slow  # trains a 2-step reward model, then generates and scores (~25 s of CPU)
def test_best_of_n_command_with_a_reward_model(tmp_path, capsys):
    """A 2-step reward run is both the policy (its decoder) and the reward model."""
    cfg = tiny_config(tmp_path / "rm", "loss.name=reward", "model.max_seq_len=64",
                      "train.seq_len=64", "train.steps=2", "train.ckpt_every=2",
                      "eval.batches=1")  # fmt: skip
    records = toy_records(40)
    train(cfg, train_batches=PairBatches(TOK, records, 8, 64),
          val_batches=lambda: val_batches(TOK, records[:8], 8, 64), tokenizer=TOK)  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    out = tmp_path / "bon"
    argv = ["best-of-n", "--checkpoint", str(tmp_path / "rm"), "--reward-model",
            str(tmp_path / "rm"), "--prompts", str(prompts), "--n", "3", "--out", str(out),
            "--max-new-tokens", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["prompts"] == 3 and result["n"] == 3 and result["truth_prompts"] == 3
    picks = [json.loads(x) for x in (out / "picks.jsonl").read_text().splitlines()]
    rm = RewardModel.load(tmp_path / "rm")
    for p in picks:
        rescored = rm([p["prompt"]] * 3, p["samples"])
        np.testing.assert_allclose(p["scores"], rescored, rtol=1e-5, atol=1e-6)
        assert p["best"] == int(np.argmax(rescored))
    np.testing.assert_allclose(result["mean_best"], np.mean([max(p["scores"]) for p in picks]))
    truth = rm([r["prompt"] for r in records[:3]], [r["chosen"] for r in records[:3]])
    np.testing.assert_allclose(result["mean_truth"], truth.mean(), rtol=1e-5)
    assert main([*argv, "--temperature", "0"]) == 2
    assert "--temperature 0 is greedy" in capsys.readouterr().err


def test_engine_for_sizes_the_cache_to_the_prompts_and_samples_alike():
    """A cache of bucket(longest prompt + new tokens) rows, not the model's whole context
    (SmolLM2's 8,192 positions x 32 rows ran out of memory); the samples do not change."""
    cfg = tiny_config("x", "model.max_seq_len=256")
    params = init_params(cfg.model, jax.random.key(0))
    small = engine_for(cfg.model, params, TOK, PROMPTS, 12)
    assert small.max_len == 64  # longest prompt 35 bytes + 12 -> bucket 64
    full = Engine(cfg.model, params, TOK)
    assert full.max_len == 256
    kw = {**KW, "batch_size": 8}
    picks = [best_of_n(e, PROMPTS[:2], vowels, 2, **kw) for e in (small, full)]
    assert [p.samples for p in picks[0]] == [p.samples for p in picks[1]]

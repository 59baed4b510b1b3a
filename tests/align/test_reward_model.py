"""Loading a trained reward model and scoring text (llm/align/reward_model.py, score-reward)."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from reward_fixtures import PairBatches, pair_batch, toy_records, val_batches
from train_fixtures import tiny_config

from llm.align.reward_model import RewardModel
from llm.cli import main
from llm.config import load_config, save_config
from llm.tokenizers import load_tokenizer
from llm.train.loop import train
from llm.train.losses.reward import HEAD, rewards
from llm.train.trainable import MODEL

L = 64
RM = ["loss.name=reward", "model.max_seq_len=64", f"train.seq_len={L}", "eval.batches=4"]
TOK = load_tokenizer("byte")
HELD_OUT = toy_records(24, seed=7)


def _train_rm(run_dir, steps, *extra):
    cfg = tiny_config(run_dir, *RM, f"train.steps={steps}", f"train.ckpt_every={steps}", *extra)
    return train(
        cfg,
        train_batches=PairBatches(TOK, toy_records(200, seed=3), 8, L),
        val_batches=lambda: val_batches(TOK, HELD_OUT, 8, L),
        tokenizer=TOK,
    )


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    return run_dir, _train_rm(run_dir, 40, "optim.warmup_steps=5")


def _training_rewards(result, records):
    """The rewards the training forward gives the records' pairs ([N, 2])."""
    cfg, state = tiny_config("x", *RM).model, result["state"]
    batch = {k: jnp.asarray(v) for k, v in pair_batch(TOK, records, L).items()}
    return np.asarray(rewards(cfg, state.params, state.frozen, batch))


def test_loaded_model_scores_as_the_training_forward(rm_run):
    run_dir, result = rm_run
    rm = RewardModel.load(run_dir)
    assert rm.step == 40 and set(rm.params) == {MODEL, HEAD}
    prompts = [r["prompt"] for r in HELD_OUT]
    chosen = rm(prompts, [r["chosen"] for r in HELD_OUT])
    rejected = rm.score(prompts, [r["rejected"] for r in HELD_OUT], batch_size=5)  # ragged
    assert chosen.dtype == np.float32 and chosen.shape == (24,)
    want = _training_rewards(result, HELD_OUT)
    np.testing.assert_allclose(chosen, want[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rejected, want[:, 1], rtol=1e-5, atol=1e-5)
    d = chosen - rejected
    wins = np.mean((d > 0) + 0.5 * (d == 0))
    np.testing.assert_allclose(wins, result["val"]["accuracy"], atol=1e-6)
    assert wins > 0.75  # the trained model ranks held-out pairs (0.5 at step 0)


def test_tiny_reward_model_learns_to_rank_held_out_pairs(rm_run):
    """Real words over the same words spelled backwards; the zero head's accuracy is 0.5 and
    its loss log 2 (tests/train/test_reward_loss.py)."""
    val = rm_run[1]["val"]
    # measured at step 40: accuracy 0.917, loss 0.357, margin 1.05 (24 held-out pairs)
    assert val["accuracy"] >= 0.85, val
    assert val["loss"] < 0.55, val  # log 2 = 0.693 at step 0
    assert val["reward_margin"] > 0.6, val


def test_lora_reward_model_is_loaded_with_its_adapter_merged(tmp_path):
    result = _train_rm(
        tmp_path / "run", 3, "peft.method=lora", "peft.rank=4", "optim.lr=3e-2", "eval.batches=1"
    )
    state = result["state"]
    assert "lora" in state.params and HEAD in state.params and MODEL in state.frozen
    rm = RewardModel.load(tmp_path / "run")
    recs = HELD_OUT[:6]
    got = np.stack([rm([r["prompt"] for r in recs], [r[k] for r in recs])
                    for k in ("chosen", "rejected")], axis=1)  # fmt: skip
    np.testing.assert_allclose(got, _training_rewards(result, recs), rtol=1e-4, atol=1e-5)
    base = {MODEL: state.frozen[MODEL], HEAD: state.params[HEAD]}
    cfg = tiny_config("x", *RM).model
    batch = {k: jnp.asarray(v) for k, v in pair_batch(TOK, recs, L).items()}
    unadapted = np.asarray(rewards(cfg, base, {}, batch))
    assert np.max(np.abs(unadapted - got)) > 1e-4  # the adapter is what was loaded


def test_a_run_that_is_not_a_reward_model_is_refused(tmp_path):
    """Refused from its config.yaml, before any weight is read (a run layout suffices)."""
    (tmp_path / "lm" / "checkpoints").mkdir(parents=True)
    save_config(tiny_config(tmp_path / "lm"), tmp_path / "lm" / "config.yaml")
    with pytest.raises(ValueError, match=r"not a reward model.*loss.name='causal_lm'"):
        RewardModel.load(tmp_path / "lm")


def test_an_overlong_example_is_an_error_not_cut(rm_run):
    rm = RewardModel.load(rm_run[0])
    with pytest.raises(ValueError, match=r"example 1 renders to \d+ tokens, more than"):
        rm(["line?", "line?"], ["to be", "x" * 80])


def test_score_reward_command_reports_accuracy_and_writes_scores(rm_run, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps({**r, "rejection": "ab"[i // 6]}) for i, r in enumerate(HELD_OUT[:8])]
    user, answer = {"role": "user", "content": "line?"}, {"role": "assistant", "content": "to be"}
    lines.append(json.dumps({"prompt": [user], "completion": [answer]}))
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score-reward", "--checkpoint", str(rm_run[0]), "--data", str(data),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    d = np.array([r["score_chosen"] - r["score_rejected"] for r in rows[:8]])
    acc = (d > 0) + 0.5 * (d == 0)
    assert f"pairs 8: accuracy {np.mean(acc):.4f}, mean margin {np.mean(d):.4f}" in printed
    assert f"  rejection=a 6: accuracy {np.mean(acc[:6]):.4f}" in printed
    assert f"  rejection=b 2: accuracy {np.mean(acc[6:]):.4f}" in printed
    rm = RewardModel.load(rm_run[0])
    np.testing.assert_allclose(rows[8]["score"], rm(["line?"], ["to be"])[0], rtol=1e-6)


def test_score_reward_names_the_bad_line(rm_run, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(HELD_OUT[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "c"}))
    assert main(["score-reward", "--checkpoint", str(rm_run[0]), "--data", str(data)]) == 2
    assert "bad.jsonl:2: pair record is missing key 'rejected'" in capsys.readouterr().err


def test_reward_model_serves_as_a_jax_free_reward_function(rm_run):
    """The RL loop calls it with plain lists and gets float32 numpy back (no jax arrays)."""
    rm = RewardModel.load(rm_run[0])
    out = rm(("line?",), ("to be or",))
    assert type(out) is np.ndarray and out.dtype == np.float32
    assert not isinstance(out, jax.Array)


PRESETS = Path(__file__).parents[2] / "configs"


@pytest.mark.slow  # ~30 s of CPU: the preset's 4-layer model
def test_rm_tiny_preset_trains_through_the_preference_pipeline(tmp_path):
    """The preset as written (data.format=preference, llm/data/preference.py) on the toy pairs,
    shorter rows and fewer steps: the held-out accuracy leaves chance (0.5)."""
    corpus = tmp_path / "toy.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in toy_records(200, seed=3)))
    cfg = load_config(PRESETS / "rm_tiny.yaml",
                      [f"data.corpus={corpus}", f"train.run_dir={tmp_path / 'run'}",
                       "train.steps=60", "train.seq_len=64", "model.max_seq_len=64",
                       "train.batch_size=8", "eval.batches=4", "train.eval_every=0",
                       "data.val_fraction=0.15"])  # fmt: skip
    result = train(cfg)
    # measured: accuracy 0.933, loss 0.151 at step 60 (30 pairs; 0.633 at step 30 with lr 3e-3)
    assert result["val"]["accuracy"] > 0.8, result["val"]
    assert RewardModel.load(tmp_path / "run").config.data.format == "preference"

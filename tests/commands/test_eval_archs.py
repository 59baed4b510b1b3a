"""`llm train` samples and `llm eval` on a prefix-LM SFT run and on a T5 run: both evaluate
through the run's own loss (the SFT loss builds the prefix, Seq2SeqLoss reads encoder
batches), print samples, and refuse `--tasks` by name."""

from __future__ import annotations

import json
import re

import pytest

from llm.cli import main
from tests.train.train_fixtures import TEXT

# two tiny training runs (2 steps, checkpoint, eval, samples): ~135 s on 2 busy cores
pytestmark = pytest.mark.slow

SFT = [
    "model.vocab_size=259", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
    "model.d_ff=64", "model.max_seq_len=64", "model.prefix_lm=true", "data.format=chat",
    "data.tokenizer=byte", "data.eval_corpus=null", "data.val_fraction=0.25", "loss.name=sft",
    "train.batch_size=8", "train.seq_len=64", "train.steps=2", "train.log_every=1",
    "train.eval_every=0", "train.ckpt_every=0", "train.async_checkpointing=false",
    "eval.batches=1", "eval.samples=1", "eval.sample_tokens=3", "eval.prompt=What is 1 + 2?",
]  # fmt: skip
T5 = [
    "model.arch=t5", "model.vocab_size=264", "model.d_model=32", "model.n_layers=1",
    "model.n_decoder_layers=1", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
    "model.activation=relu", "model.norm=rmsnorm", "model.pos_encoding=none",
    "data.objective=span_corruption", "loss.name=seq2seq", "data.tokenizer=byte",
    "data.eval_corpus=null", "data.min_chars=1", "data.val_fraction=0.2",
    "data.dedup_exact=false", "data.near_dup_threshold=null", "train.batch_size=8",
    "train.seq_len=32", "train.steps=2", "train.eval_every=0", "train.ckpt_every=0",
    "train.async_checkpointing=false", "eval.batches=1", "eval.samples=1",
]  # fmt: skip


def _chats(path):
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"{a + b}."}]}
            for a in range(6) for b in range(4)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefix")
    corpus = _chats(tmp / "chats.jsonl")
    args = [*SFT, f"data.corpus={corpus}", f"data.cache_dir={tmp / 'cache'}",
            f"train.run_dir={tmp / 'run'}"]  # fmt: skip
    assert main(["train", *args]) == 0  # trains, evaluates, saves, samples
    return tmp / "run"


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t5")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"doc{i}.txt").write_text(TEXT * 3)
    args = [*T5, f"data.corpus={corpus}", f"data.cache_dir={tmp / 'cache'}",
            f"train.run_dir={tmp / 'run'}"]  # fmt: skip
    assert main(["train", *args]) == 0
    return tmp / "run"


def _val_loss(run) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "val"][-1]["loss"]


def test_prefix_lm_run_samples_and_evaluates_through_its_sft_loss(prefix_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(prefix_run), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"validation\s+val assistant loss", out), out
    assert f"val assistant loss {_val_loss(prefix_run):.4f}" in out  # as the run scored it
    assert "--- sample 1 ---\nWhat is 1 + 2?" in out


def test_t5_run_evaluates_through_seq2seq_loss_and_decodes_rows(t5_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(t5_run)]) == 0
    out = capsys.readouterr().out
    assert f"val target loss {_val_loss(t5_run):.4f}" in out, out
    assert "greedy decoding of validation rows" in out and "exact match of these 1 rows" in out


@pytest.mark.parametrize("which", ["t5", "prefix"])
def test_tasks_refuse_t5_and_prefix_lm_by_name(which, t5_run, prefix_run, tmp_path, capsys):
    run, name = (t5_run, "model.arch=t5") if which == "t5" else (prefix_run, "model.prefix_lm")
    argv = ["eval", "--checkpoint", str(run), "--tasks", "ppl", "--out", str(tmp_path / "r")]
    assert main(argv) == 2  # a usage error, one line naming the switch
    assert name in capsys.readouterr().err

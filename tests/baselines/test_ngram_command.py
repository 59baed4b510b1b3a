"""`llm ngram`: counts a config's train split, scores validation, prints and writes results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.baselines.heldout import heldout_metrics, split_documents
from llm.baselines.ngram import fit_ngram
from llm.baselines.ngram_counts import Documents
from llm.cli import main
from llm.config import load_config
from llm.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ngram_cmd_corpus")
    rng = np.random.default_rng(1)
    words = ["my", "lord", "the", "queen", "is", "dead", "long", "live", "king", "æther"]
    for i in range(10):
        lines = [" ".join(rng.choice(words, 8)) for _ in range(int(rng.integers(4, 15)))]
        (folder / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    cache = tmp_path_factory.mktemp("ngram_cmd_cache")
    return [f"data.corpus={folder}", f"data.cache_dir={cache}", "data.eval_corpus=null",
            "data.min_chars=1", "data.val_fraction=0.3", "train.batch_size=2",
            "train.seq_len=16"]  # fmt: skip


def test_ngram_command_reports_what_the_api_computes(overrides, tmp_path, capsys):
    out = tmp_path / "mkn.json"
    assert main(["ngram", *overrides, "--method", "mkn", "--order", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "val_bpb" in capsys.readouterr().out
    cfg, tok = load_config(None, overrides), ByteTokenizer()
    shards = split_documents(cfg.data, tok)
    lm = fit_ngram(Documents.from_shard(shards["train"]), 3, "mkn", tok.vocab_size, tok.bos_id)
    val = shards["validation"]
    want = heldout_metrics(lm.logprobs(Documents.from_shard(val)), val, tok, 16, 2)
    assert result["val_bpb"] == pytest.approx(want["bpb"], rel=1e-12)
    assert result["ngrams"] == lm.counts.num_ngrams() and result["order"] == 3
    assert result["train_tokens"] == shards["train"].num_tokens


def test_ngram_command_eval_batches_and_hmm(overrides, tmp_path):
    runs = {}
    for name, extra in {
        "all": ["--method", "addk", "--k", "0.1", "--order", "2"],
        "one": ["--method", "addk", "--k", "0.1", "--order", "2", "--eval-batches", "1"],
        "hmm": ["--method", "hmm", "--states", "3", "--iters", "2", "--hmm-tokens", "400"],
    }.items():
        out = tmp_path / f"{name}.json"
        assert main(["ngram", *overrides, *extra, "--out", str(out)]) == 0
        runs[name] = json.loads(out.read_text())
    assert runs["one"]["val_tokens"] <= 2 * 16 < runs["all"]["val_tokens"]
    assert runs["hmm"]["params"] == 3 * (1 + 3 + 259) and 0 < runs["hmm"]["val_bpb"] < 9


@pytest.mark.parametrize(
    "bad",
    [
        ["--method", "mkn", "--k", "0.5"],  # --k is add-k's
        ["--method", "hmm", "--order", "3"],  # an HMM has no order
        ["--method", "kn", "--discount", "1.5"],  # D must lie in [0, 1]
        ["--method", "mkn", "--states", "4"],  # an HMM option
    ],
)
def test_ngram_command_refuses_meaningless_options(overrides, bad, capsys):
    assert main(["ngram", *overrides, *bad]) == 2
    assert "error" in capsys.readouterr().err

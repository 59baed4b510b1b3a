"""`llm wordvec` end to end on a small text file (no download): train each method, then
neighbors, analogy and similarity read the written directory; bad arguments exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.cli import main
from llm.embeddings.eval_sets import PARAPHRASES, analogy_items
from llm.embeddings.vectors import WordVectors


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The paraphrase sentences and the analogy words, repeated in shuffled order."""
    rng = np.random.default_rng(0)
    lines = [a for a, _, _ in PARAPHRASES] + [b for _, b, _ in PARAPHRASES]
    lines += [" ".join(item[1:]) for item in analogy_items()]
    path = tmp_path_factory.mktemp("wordvec") / "corpus.txt"
    path.write_text("\n".join(lines[i] for i in rng.integers(len(lines), size=600)) + "\n")
    return path


@pytest.mark.parametrize("method", ["sgns", "cbow", "glove"])
def test_train_writes_a_vector_directory(method, text_file, tmp_path, capsys):
    out = tmp_path / method
    args = ["wordvec", "train", "--method", method, "--out", str(out), "--text", str(text_file),
            "--dim", "8", "--epochs", "1", "--batch", "64", "--min-count", "2"]  # fmt: skip
    assert main(args) == 0
    wv = WordVectors.load(out)
    assert wv.vectors_VD.shape == (len(wv), 8) and np.isfinite(wv.vectors_VD).all()
    assert "king" in wv.index and wv.meta["method"] == method
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == {"text": str(text_file)} and meta["config"]["dim"] == 8
    assert f"wrote {out}" in capsys.readouterr().out


def test_neighbors_analogy_similarity(text_file, tmp_path, capsys):
    out = tmp_path / "v"
    main(["wordvec", "train", "--method", "sgns", "--out", str(out), "--text", str(text_file),
          "--dim", "8", "--epochs", "1", "--batch", "64"])  # fmt: skip
    capsys.readouterr()
    assert main(["wordvec", "neighbors", str(out), "King", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("king" != line.split()[1] for line in lines)
    assert main(["wordvec", "analogy", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all" in printed and "(56 questions)" in printed
    assert main(["wordvec", "similarity", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("mean-vector cosine", "-WMD", "-RWMD", "TF-IDF cosine"):
        assert name in printed
    assert main(["wordvec", "neighbors", str(out), "zzzz"]) == 2
    assert "zzzz" in capsys.readouterr().err


def test_refusals(text_file, tmp_path, capsys):
    base = ["wordvec", "train", "--out", str(tmp_path / "x"), "--text", str(text_file)]
    assert main([*base, "--method", "glove", "--negatives", "3"]) == 2
    assert "word2vec option" in capsys.readouterr().err
    assert main([*base, "--method", "sgns", "--corpus", "kjv"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["wordvec", "analogy", str(tmp_path)]) == 2
    assert "not a word-vector directory" in capsys.readouterr().err

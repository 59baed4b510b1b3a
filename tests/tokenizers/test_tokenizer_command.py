"""`llm tokenizer train|encode|decode|inspect` end to end, and `llm.tokenizers.train` errors."""

from __future__ import annotations

import pytest

from llm.cli import main
from llm.data.corpora import text_files
from llm.tokenizers import load_tokenizer
from llm.tokenizers.train import ALGORITHMS, iter_lines, train_tokenizer


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_train_then_use(algo, corpus_file, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", corpus_file, "--algo", algo, "--vocab-size", "600",
                 "--out", str(out)]) == 0  # fmt: skip
    saved = capsys.readouterr().out.split("saved ")[1].split()[0]
    tok = load_tokenizer(saved)
    assert tok.vocab_size == 600

    assert main(["tokenizer", "encode", "--tokenizer", saved, "--pieces", "to be or not"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.splitlines()[0].split()]
    assert ids == tok.encode("to be or not")

    assert main(["tokenizer", "decode", "--tokenizer", saved, *map(str, ids)]) == 0
    assert capsys.readouterr().out == tok.decode(ids) + "\n"

    assert main(["tokenizer", "inspect", saved]) == 0
    assert f"vocab_size  {tok.vocab_size}" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff utf8\n")
    assert main(["tokenizer", "train", str(bad), "--algo", "bpe", "--vocab-size", "300",
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "bad.txt:2: invalid UTF-8" in capsys.readouterr().err
    assert main(["tokenizer", "inspect", "gpt2"]) == 2
    assert "unknown tokenizer 'gpt2'" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "--tokenizer", "byte", "300"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_train_tokenizer_checks_arguments(tmp_path, corpus_file):
    with pytest.raises(ValueError, match="unknown algorithm 'bpe2'"):
        train_tokenizer("bpe2", [corpus_file], 300, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"gone\.txt"):
        train_tokenizer("bpe", [tmp_path / "gone.txt"], 300, tmp_path / "x")
    with pytest.raises(ValueError, match="no training files"):
        train_tokenizer("bpe", [], 300, tmp_path / "x")


def test_iter_lines_keeps_newlines(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo", encoding="utf-8")
    assert list(iter_lines([tmp_path / "a.txt"])) == ["one\n", "two"]


def test_builtin_corpus_name_is_read_from_the_prepared_cache(tmp_path, monkeypatch, corpus):
    """`shakespeare` resolves through llm.data.corpora.text_files; a pre-filled cache means no
    download."""
    import json

    jsonl = tmp_path / "corpora" / "shakespeare" / "documents.jsonl"
    jsonl.parent.mkdir(parents=True)
    docs = ["".join(corpus[:700]), "".join(corpus[700:])]
    jsonl.write_text(
        "".join(json.dumps({"title": str(i), "text": t}) + "\n" for i, t in enumerate(docs))
    )
    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    out = train_tokenizer("bpe", text_files(["shakespeare"], tmp_path), 400, tmp_path / "tok")
    from llm.tokenizers.bpe import train_bpe

    assert load_tokenizer(str(out)).encode("".join(corpus)) == train_bpe(corpus, 400).encode(
        "".join(corpus)
    )
    with pytest.raises(FileNotFoundError, match="neither a file nor a built-in corpus"):
        text_files(["hamlet"], tmp_path)


@pytest.mark.parametrize("algo", ["bpe", "wordpiece", "unigram"])
def test_too_little_text_reports_the_vocabulary_it_reached(algo, tmp_path, capsys):
    """Two short lines cannot fill 400 tokens: the command says how many the file has."""
    (tmp_path / "a.txt").write_text("hello world\nthe quick brown fox\n")
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--algo", algo,
                 "--vocab-size", "400", "--out", str(tmp_path / "tok")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    saved = out.split("saved ")[1].split()[0]
    size = load_tokenizer(saved).vocab_size
    assert size < 400
    assert f"trained {algo} ({size} tokens)" in out
    assert f"{size} tokens, not the 400 asked for" in out


def test_sentencepiece_refuses_a_vocabulary_the_text_cannot_fill(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello world\nthe quick brown fox\n")
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--algo", "spm-unigram",
                 "--vocab-size", "400", "--out", str(tmp_path / "tok")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "vocab_size=400 is more than this text supports (at most " in err
    assert "Traceback" not in err and not (tmp_path / "tok.model").exists()

"""`llm data ...` end to end on a small local corpus."""

from __future__ import annotations

from llm.cli import main


def test_prepare_report_and_tokenize(txt_corpus, tmp_path, capsys):
    folder, _ = txt_corpus
    common = [
        f"data.corpus={folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.eval_corpus=null",
    ]
    assert main(["data", "prepare", *common]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "validation" in out and "documents" in out
    assert main(["data", "report", *common, "data.min_chars=500"]) == 0
    out = capsys.readouterr().out
    assert "quality" in out and "too short" in out and "near dedup" in out
    assert main(["data", "report", *common, "data.min_chars=5000"]) == 2
    assert "empty corpus after cleaning: every document was removed" in capsys.readouterr().err
    assert main(["data", "tokenize", "--out", str(tmp_path / "tok"), *common]) == 0
    capsys.readouterr()
    assert (
        main(["data", "prepare", f"data.corpus={tmp_path / 'tok'}", "data.eval_corpus=null"]) == 0
    )
    assert "cache key dir:" in capsys.readouterr().out


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"body": "no text field"}\n')
    code = main(
        [
            "data",
            "report",
            f"data.corpus={tmp_path}",
            f"data.cache_dir={tmp_path}",
            "data.eval_corpus=null",
        ]
    )
    assert code == 2
    assert "x.jsonl:1: missing field 'text'" in capsys.readouterr().err

"""Each reader, and each bad-input case with the message that names file and line."""

from __future__ import annotations

import json
import re

import pytest

from llm.data.sources import LoadStats, SourceError, read_documents


def test_txt_one_document_per_file_and_separated(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n")
    (tmp_path / "b.txt").write_text("one\n%\ntwo\nlines\n%\n%\nthree")
    whole = read_documents(str(tmp_path / "a.txt"))
    assert [d.text for d in whole] == ["first doc\n"]
    stats = LoadStats()
    docs = read_documents(str(tmp_path / "b.txt"), separator="%", stats=stats)
    assert [d.text for d in docs] == ["one\n", "two\nlines\n", "three"]
    assert [d.origin.rsplit(":", 1)[1] for d in docs] == ["1", "3", "7"]
    assert stats.skipped["empty text"] == 1  # the empty document between two separators


def test_directory_reads_known_extensions_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("bee")
    (tmp_path / "a.jsonl").write_text('{"text": "ay"}\n')
    (tmp_path / "notes.md").write_text("ignored")
    assert [d.text for d in read_documents(str(tmp_path))] == ["ay", "bee"]


def test_jsonl_field_and_skips_counted(tmp_path):
    path = tmp_path / "x.jsonl"
    rows = [{"body": "alpha"}, {"body": None}, {"body": "  "}, {"body": "beta", "id": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    stats = LoadStats()
    docs = read_documents(str(path), text_field="body", stats=stats)
    assert [(d.text, d.origin) for d in docs] == [("alpha", f"{path}:1"), ("beta", f"{path}:4")]
    assert stats.skipped == {"null text": 1, "empty text": 1}


def test_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["one", None, "three"], "n": [1, 2, 3]}), path)
    stats = LoadStats()
    docs = read_documents(str(path), text_field="content", stats=stats)
    assert [(d.text, d.origin) for d in docs] == [
        ("one", f"{path}#row0"),
        ("three", f"{path}#row2"),
    ]
    assert stats.skipped["null text"] == 1
    with pytest.raises(SourceError, match=re.escape(f"{path}: missing column 'text'")):
        read_documents(str(path))
    with pytest.raises(SourceError, match="column 'n' has type int64, not string"):
        read_documents(str(path), text_field="n")


def test_hf_dataset_from_disk_and_from_files(tmp_path):
    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["hello", "world"]}),
            "test": datasets.Dataset.from_dict({"text": ["held out"]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    assert [d.text for d in read_documents(str(tmp_path / "saved"), fmt="hf")] == ["hello", "world"]
    test = read_documents(str(tmp_path / "saved"), fmt="hf", hf_split="test")
    assert [d.text for d in test] == ["held out"]
    with pytest.raises(SourceError, match=r"no split 'valid' \(splits: \['train', 'test'\]\)"):
        read_documents(str(tmp_path / "saved"), fmt="hf", hf_split="valid")
    (tmp_path / "f.jsonl").write_text('{"text": "from file"}\n{"text": "two"}\n')
    docs = read_documents(str(tmp_path / "f.jsonl"), fmt="hf")
    assert [d.text for d in docs] == ["from file", "two"]


@pytest.mark.parametrize(
    "content, field, message",
    [
        (
            '{"text": "ok"}\n{"txt": "typo"}\n',
            "text",
            r"x.jsonl:2: missing field 'text' \(keys: \['txt'\]\)",
        ),
        ('{"text": "ok"}\n\n{"text": "ok",\n', "text", r"x.jsonl:3: invalid JSON"),
        ('["a list"]\n', "text", r"x.jsonl:1: expected a JSON object, got list"),
        ('{"text": 7}\n', "text", r"x.jsonl:1: field 'text' is int, not a string"),
    ],
)
def test_jsonl_bad_input_names_file_and_line(tmp_path, content, field, message):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(SourceError, match=message):
        read_documents(str(tmp_path / "x.jsonl"), text_field=field)


def test_invalid_utf8_strict_names_line_and_replace_counts(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nsecond \xff line\n")
    with pytest.raises(SourceError, match=r"bad.txt:2: invalid UTF-8 \(byte 0xff at column 8\)"):
        read_documents(str(path))
    stats = LoadStats()
    docs = read_documents(str(path), errors="replace", stats=stats)
    assert docs[0].text == "good line\nsecond \ufffd line\n"
    assert stats.replaced_utf8 == 1
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xc3("}\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:2: invalid UTF-8"):
        read_documents(str(tmp_path / "bad.jsonl"))


def test_empty_corpus_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SourceError, match=r"empty corpus: no documents in 1 file\(s\)"):
        read_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(SourceError, match="no input files found"):
        read_documents(str(tmp_path / "nothing*.txt"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match=r"unknown extension '\.csv'; set data\.format"):
        read_documents(str(tmp_path / "data.csv"))

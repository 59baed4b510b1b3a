"""Cleaning steps, quality filters and the per-stage report."""

from __future__ import annotations

import collections

from llm.config import load_config
from llm.data.cleaning import clean_text, dup_line_ratio, quality_problem, symbol_ratio
from llm.data.corpus import prepare_documents, split_documents


def test_clean_text_normalizes_controls_and_whitespace():
    counts = collections.Counter()
    raw = "\ufeffCafe\u0301 \x07bell\r\nline  \t\r\n\n\n\n\n\nend\u200b  \n"
    assert clean_text(raw, "NFC", counts) == "Café bell\nline\n\n\nend"
    assert counts["control characters removed"] == 3  # BOM, BEL, zero-width space
    assert counts["documents changed by normalization"] == 1
    assert counts["line-ending characters removed"] == 2
    assert clean_text("ﬁ ①", "NFKC", counts) == "fi 1"
    assert clean_text("ﬁ", "none", counts) == "ﬁ"
    assert clean_text("  indented\n\tverse", "NFC", counts) == "indented\n\tverse"


def test_quality_filters():
    assert symbol_ratio("ab!?") == 0.5
    line = "a line long enough to count for repetition here"
    text = f"{line}\n{line}\nHam.\nHam.\nHam."  # short lines (speaker tags) do not count
    assert dup_line_ratio(text) == len(line) / len(text)
    assert quality_problem("short", 10, 0.3, 0.3) == "too short"
    assert quality_problem("#$%&*@!" * 10 + "text", 10, 0.3, 0.3) == "too many symbols"
    assert quality_problem((line + "\n") * 3, 10, 0.3, 0.3) == "repeated lines"
    assert quality_problem(line, 10, 0.3, 0.3) is None


def test_report_counts_every_stage(tmp_path, random_text):
    import numpy as np

    rng = np.random.default_rng(1)
    texts = [random_text(rng, 150) for _ in range(6)]
    words = texts[0].split(" ")
    words[40] = "CHANGED"  # one word in 150: a near-duplicate of texts[0]
    planted = [texts[0], " ".join(words), "tiny", "@#$%^&*()!" * 30, texts[0]]
    for i, text in enumerate(texts + planted):
        (tmp_path / f"d{i:02d}.txt").write_text(text)
    (tmp_path / "d99.txt").write_text("\n")
    cfg = load_config(None, [f"data.corpus={tmp_path}", "data.min_chars=50"]).data
    docs, report = prepare_documents(cfg, cfg.corpus)
    removed = {s.name: (s.docs_removed, s.details) for s in report.stages}
    assert removed["read"][0] == 1 and removed["read"][1]["empty text"] == 1
    assert removed["quality"] == (2, {"too short": 1, "too many symbols": 1})
    assert removed["exact dedup"][0] == 2  # both verbatim copies of texts[0]
    assert removed["near dedup"][0] == 1  # the one-word edit
    assert [d.text for d in docs] == [t.strip() for t in texts]
    assert report.docs_read == 12 and report.docs_kept == 6
    assert "near dedup" in report.format()


def test_split_is_by_document_deterministic_and_complete():
    from llm.data.sources import Document

    docs = [Document(str(i), f"f:{i}") for i in range(40)]
    a = split_documents(docs, 0.1, seed=3)
    assert a == split_documents(docs, 0.1, seed=3)
    assert a != split_documents(docs, 0.1, seed=4)
    assert len(a["validation"]) == 4
    assert sorted(d.text for s in a.values() for d in s) == sorted(d.text for d in docs)
    assert len(split_documents(docs[:2], 0.01, 0)["validation"]) == 1

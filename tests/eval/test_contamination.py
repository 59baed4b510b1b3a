"""Contamination: word n-gram overlap of task items with a training corpus.

The streaming implementation is checked against a plain definition (every m-gram of every
whole document in one set), including n-grams that straddle the pieces a long document is read
in; a planted item is flagged and no clean item is; the command reads task files and a corpus
split the way training splits it.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from llm.cli import main
from llm.data.dedup import CHUNK_CHARS
from llm.eval.contamination import contamination

VOCAB = [f"v{i}" for i in range(8)]  # a small vocabulary: partial overlaps happen by chance


def words(rng, n, vocab=VOCAB) -> list[str]:
    return list(rng.choice(vocab, size=n))


def reference(items: list[str], corpus: list[str], n: int) -> list[float]:
    """The definition, written plainly: the fraction of an item's distinct n-grams (its one
    all-words gram when shorter than n) that are some document's consecutive words."""

    def tokens(text):
        return re.findall(r"\w+", text.lower())

    seen = set()
    for doc in corpus:
        w = tokens(doc)
        seen |= {tuple(w[i : i + m]) for m in range(1, n + 1) for i in range(len(w) - m + 1)}
    out = []
    for item in items:
        w = tokens(item)
        grams = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)} or {tuple(w)}
        out.append(sum(g in seen for g in grams) / len(grams))
    return out


def test_fractions_equal_the_plain_definition_across_piece_boundaries():
    rng = np.random.default_rng(0)
    # one document longer than a piece (dedup.CHUNK_CHARS): n-grams cross the cut
    long = words(rng, 50_000)
    corpus = [" ".join(long), " ".join(words(rng, 200)), ""]
    assert len(corpus[0]) > 2 * CHUNK_CHARS
    items = [" ".join(words(rng, int(rng.integers(1, 25)))) for _ in range(300)]
    at = CHUNK_CHARS // 3  # the word at the first cut ("vN " is 3 characters)
    items.append(" ".join(long[at - 12 : at + 12]))  # an item across the cut: found whole
    report = contamination(items, corpus, n=6)
    np.testing.assert_array_equal(report.fractions, reference(items, corpus, 6))
    assert 0 < report.fractions.mean() < 1  # partial overlaps were exercised
    assert report.items[-1].fraction == 1.0
    assert report.corpus_docs == 3 and report.corpus_words == 50_200


def test_planted_item_flagged_and_no_clean_item():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(5000)]  # large: a chance 13-gram is impossible
    corpus = [" ".join(words(rng, 400, vocab)) for _ in range(20)]
    planted = " ".join(words(rng, 40, vocab))
    # in the corpus with other case and punctuation: the words are what count
    corpus[7] = corpus[7] + " " + planted.upper().replace(" ", ", ") + "!"
    items = [" ".join(words(rng, 40, vocab)) for _ in range(30)] + [planted]
    # 27 of an item's 40 words planted: 15 of its 28 13-grams found
    part = " ".join(words(rng, 27, vocab))
    corpus[3] += " " + part
    items.append(part + " " + " ".join(words(rng, 13, vocab)))
    ids = [f"clean{i}" for i in range(30)] + ["planted", "part"]
    report = contamination(items, corpus, n=13, threshold=0.6, ids=ids)
    assert report.flagged == ["planted"]
    assert report.items[30].fraction == 1.0 and report.items[31].fraction == 15 / 28
    assert contamination(items, corpus, 13, 0.5, ids).flagged == ["planted", "part"]
    # threshold 0: any n-gram found (Brown et al.'s "dirty"); the clean items still are not
    assert contamination(items, corpus, 13, 0.0, ids).flagged == ["planted", "part"]
    assert all(i.fraction == 0 for i in report.items[:30])


def test_short_items_are_one_gram_and_empty_items_are_listed():
    corpus = ["O Romeo, Romeo! wherefore art thou Romeo?"]
    items = ["wherefore ART thou", "thou art wherefore", "...", "Romeo"]
    report = contamination(items, corpus, n=13, ids=["a", "b", "c", "d"])
    assert [(i.id, i.ngrams, i.fraction, i.short) for i in report.items] == [
        ("a", 1, 1.0, True),  # its three words in a row
        ("b", 1, 0.0, True),  # the same words in another order: not found
        ("d", 1, 1.0, True),
    ]
    assert report.empty == ("c",)
    assert report.summary()["items"] == 4 and report.summary()["scored"] == 3
    with pytest.raises(ValueError, match="threshold"):
        contamination(items, corpus, n=13, threshold=1.5)


def test_command_checks_the_training_split_only(tmp_path, capsys):
    rng = np.random.default_rng(2)
    vocab = [f"w{i}" for i in range(5000)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [" ".join(words(rng, 300, vocab)) for _ in range(10)]
    for k, text in enumerate(texts):
        (corpus / f"doc{k}.txt").write_text(text + "\n")
    tasks = tmp_path / "tasks"
    for name, picks in {"quotes": [0, 4, 9], "fresh": []}.items():
        (tasks / name).mkdir(parents=True)
        rows = [
            {
                "id": f"{name}{k}",
                "query": "Q: " + texts[k][:200] + "\nAnswer:",
                "text": texts[k][:200],
                "choices": ["a", "b"],
                "gold": 0,
            }
            for k in picks
        ]
        rows += [{"id": f"{name}-new", "prompt": " ".join(words(rng, 30, vocab))}]
        (tasks / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["data", "contamination", "--tasks", str(tasks), "--corpus", str(corpus),
              "--n", "8", "data.min_chars=1", "data.val_fraction=0.2"]  # fmt: skip
    out = tmp_path / "train.json"
    assert main([*common, "--out", str(out)]) == 0
    train = json.loads(out.read_text())
    # the documents data.val_fraction=0.2, data.seed=0 holds out (llm.data.corpus's split)
    val = set(np.random.default_rng(0).permutation(10)[:2].tolist())
    assert train["corpus_docs"] == 8
    assert train["tasks"]["quotes"]["flagged_ids"] == [f"quotes{k}" for k in (0, 4, 9)
                                                      if k not in val]  # fmt: skip
    assert train["tasks"]["fresh"]["flagged"] == 0 and train["tasks"]["fresh"]["items"] == 1
    assert main([*common, "--split", "all", "--out", str(tmp_path / "all.json")]) == 0
    every = json.loads((tmp_path / "all.json").read_text())
    assert every["tasks"]["quotes"]["flagged_ids"] == ["quotes0", "quotes4", "quotes9"]
    assert "quotes" in capsys.readouterr().out
    (tasks / "bad.jsonl").write_text('{"id": "x", "gold": 1}\n')
    assert main([*common, "--tasks", str(tasks / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: no string field" in capsys.readouterr().err

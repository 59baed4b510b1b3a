"""Exact match and token F1 (llm/eval/overlap.py) equal the official SQuAD v1.1 script, as
lm-evaluation-harness 0.4.13 carries it in its qasper task (normalize_answer, f1_abstractive),
with the max over references of that script's metric_max_over_ground_truths."""

from __future__ import annotations

import random

import pytest
from lm_eval.tasks.qasper.metrics import f1_abstractive
from lm_eval.tasks.qasper.metrics import normalize_answer as squad_normalize

from llm.eval.overlap import exact_match, normalize_answer, token_f1

WORDS = ["The", "the", "a", "an", "An", "cat", "Cat.", "sat", "on", "mat", "theater",
         "another", "A.", "(the)", "1,000", "3.14", "U.S.", "café", "日本語", "😀", "it's",
         "-", "", "  "]  # fmt: skip

CASES = [
    ("The Cat sat.", ["the cat sat"]),
    ("an apple", ["apple", "the apple pie"]),
    ("", [""]),
    ("", ["something"]),
    ("something", [""]),
    ("the the the", ["a an the"]),
    ("theater another", ["theater", "another theater"]),
    ("U.S. 1,000 3.14", ["US 1000 314"]),
    ("café 😀 日本語", ["CAFÉ 😀 日本語!"]),
    ("cat cat cat", ["cat"]),
]


def _random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))


def _squad_em(hyp: str, refs: list[str]) -> float:
    return float(max(squad_normalize(hyp) == squad_normalize(r) for r in refs))


def _squad_f1(hyp: str, refs: list[str]) -> float:
    return max(f1_abstractive([hyp], [r]) for r in refs)


def test_normalize_answer_equals_squad():
    rng = random.Random(0)
    texts = [hyp for hyp, _ in CASES] + [_random_text(rng) for _ in range(50)]
    for text in texts:
        assert normalize_answer(text) == squad_normalize(text), text


@pytest.mark.parametrize("hyp, refs", CASES)
def test_edge_cases_equal_squad(hyp, refs):
    assert exact_match(hyp, refs) == _squad_em(hyp, refs)
    assert token_f1(hyp, refs) == pytest.approx(_squad_f1(hyp, refs), abs=1e-12)


def test_random_items_equal_squad():
    rng = random.Random(1)
    for _ in range(60):
        hyp, refs = _random_text(rng), [_random_text(rng) for _ in range(rng.randint(1, 3))]
        assert exact_match(hyp, refs) == _squad_em(hyp, refs), (hyp, refs)
        assert token_f1(hyp, refs) == pytest.approx(_squad_f1(hyp, refs), abs=1e-12)


def test_golden_values():
    # By hand: "cat sat" vs "the cat sat on mat" -> tokens [cat, sat] vs [cat, sat, on, mat]:
    # P = 2/2, R = 2/4, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert token_f1("Cat sat!", ["the cat sat on mat"]) == pytest.approx(2 / 3)
    assert token_f1("Cat sat!", ["dog", "the cat sat on mat", "cat"]) == pytest.approx(2 / 3)
    assert exact_match("The  Tempest.", ["tempest"]) == 1.0
    assert exact_match("Tempests", ["tempest"]) == 0.0


def test_refs_must_be_a_list():
    with pytest.raises(ValueError, match="non-empty list"):
        token_f1("a", "a")
    with pytest.raises(ValueError, match="non-empty list"):
        exact_match("a", [])

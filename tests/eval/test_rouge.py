"""ROUGE-1/2/L/Lsum (llm/eval/rouge.py) equal rouge-score 0.1.2's RougeScorer (precision,
recall and F) to 1e-6, with and without the Porter stemmer, one or several references."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from llm.eval.rouge import TYPES, rouge, rouge_item, tokenize

# Inflected forms for the stemmer, ASCII noise for the tokeniser, "\n" for Lsum's sentences.
WORDS = ["the", "The", "cat", "cats", "sat", "sitting", "on", "mat", "running", "runs", "ran",
         "happily", "happiness", "a", "dog", "dogs", "3.14", "well-known", "it's", "café",
         "日本語", "😀", "!", "end.", "\n", "\n", "generalization", "x1"]  # fmt: skip

# (hypothesis, references) pairs.
CASES = {
    "one reference": ("The cat sat on the mat.", ["The cat is on the mat."]),
    "two references": ("the cats were running", ["a cat runs", "cats were running fast"]),
    "empty hypothesis": ("", ["the cat"]),
    "empty reference": ("the cat", [""]),
    "only punctuation": ("!!! ...", ["?"]),
    "unicode": ("Ça va très bien, café 😀 日本語", ["ça va bien, cafe 😀"]),
    "numbers": ("It costs 3.14 or 1,000 (x1)", ["costs 3 14 or 1000 x1"]),
    "hypothesis longer": ("the cat sat on the mat and the cat sat again today", ["the cat"]),
    "hypothesis shorter": ("cat", ["the cat sat on the mat"]),
    "sentences": ("the cat sat.\nthe dog ran.\n\nthe end", ["a dog ran\nthe cat sat on it"]),
    "repeated tokens": ("the the the cat\nthe cat the", ["the cat\nthe the"]),
}


def _random_text(rng: random.Random, max_words: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))


def _assert_same(ours: dict, theirs: dict) -> None:
    for name in TYPES:
        expected = (theirs[name].precision, theirs[name].recall, theirs[name].fmeasure)
        got = (ours[name].precision, ours[name].recall, ours[name].fmeasure)
        assert got == pytest.approx(expected, abs=1e-6), name


@pytest.mark.parametrize("stem", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_item_equals_rouge_score_on_edge_cases(name, stem):
    hyp, refs = CASES[name]
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=stem)
    _assert_same(rouge_item(hyp, refs, TYPES, stem), scorer.score_multi(refs, hyp))


@pytest.mark.parametrize("stem", [False, True])
def test_random_items_equal_rouge_score(stem):
    """60 seeded items with 1-3 references, multi-sentence texts included."""
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=stem)
    rng = random.Random(int(stem))
    for _ in range(60):
        hyp, refs = _random_text(rng), [_random_text(rng) for _ in range(rng.randint(1, 3))]
        _assert_same(rouge_item(hyp, refs, TYPES, stem), scorer.score_multi(refs, hyp))


def test_tokenize_equals_rouge_score():
    from rouge_score import tokenizers

    rng = random.Random(5)
    for stem in (False, True):
        reference = tokenizers.DefaultTokenizer(use_stemmer=stem)
        for _ in range(30):
            text = _random_text(rng, 30)
            assert tokenize(text, stem) == reference.tokenize(text)


def test_corpus_rouge_is_mean_f_over_items():
    """`rouge` = the mean over items of rouge-score's F (score_multi per item)."""
    rng = random.Random(11)
    hyps = [_random_text(rng) for _ in range(8)]
    refs = [[_random_text(rng) for _ in hyps] for _ in range(2)]
    types = ["rouge1", "rouge3", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    scores = [scorer.score_multi([refs[0][i], refs[1][i]], h) for i, h in enumerate(hyps)]
    ours = rouge(hyps, refs, types, stem=True)
    assert list(ours) == types
    for name in types:
        expected = sum(s[name].fmeasure for s in scores) / len(scores)
        assert ours[name] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "types, message",
    [
        (["rouge0"], "unknown ROUGE type 'rouge0'"),
        (["rougeX"], "unknown ROUGE type"),
        ("rouge1", "non-empty list"),
    ],
)
def test_bad_types_are_named(types, message):
    with pytest.raises(ValueError, match=message):
        rouge(["a"], [["a"]], types)

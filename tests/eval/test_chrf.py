"""chrF and chrF++ (llm/eval/chrf.py) equal sacrebleu 2.6's CHRF to 1e-6 on hand-picked edge
cases and on seeded random corpora."""

from __future__ import annotations

import random

import pytest
import sacrebleu

from llm.eval.chrf import chrf_name, chrf_signature, corpus_chrf, sentence_chrf, split_punctuation
from tests.eval.random_text import random_corpus, random_text

WORDS = ["the", "The", "cat", "sat", "on", "mat", "a", "dog", "3.14", "1,000", "well-known",
         "(hi)", "it's", "café", "naïve", "日本語", "😀", "!", "?", "end.", "x-5", "catsat",
         "\"quoted\"", "a,b", ",lead", "U.S."]  # fmt: skip

# (hypotheses, reference streams): refs[j][i] is the j-th reference of hypothesis i.
CASES = {
    "one reference": (["The cat sat on the mat."], [["The cat is on the mat."]]),
    "two references": (
        ["The cat sat on the mat.", "Hello, world!"],
        [["The cat is on the mat.", "Hello world."], ["A cat sat on a mat.", "hello, world!"]],
    ),
    "empty hypothesis": (["", "the cat sat on the mat"], [["a b c", "the cat sat on a mat"]]),
    "empty reference line": (["a cat", "the dog ran"], [["", "the dog ran"], ["a cat", ""]]),
    "both empty": ([""], [[""]]),
    "short words": (["a b", "ab"], [["ab", "a b c"]]),
    "unicode": (
        ["Ça va très bien, merci 😀", "日本語のテキスト。"],
        [["Ça va bien, merci 😀", "日本語 の テキスト 。"]],
    ),
    "punctuation and numbers": (["(hi) it costs $3.14, ok?"], [["hi: it costs 3.14 dollars"]]),
    "hypothesis longer": (["the cat sat on the mat and then the cat sat again"], [["the cat"]]),
    "hypothesis shorter": (["cat"], [["the cat sat on the mat"], ["a cat sat"]]),
    "no match": (["xyz"], [["abc"]]),
}


def _random_text(rng: random.Random, max_words: int = 10) -> str:
    return random_text(rng, WORDS, max_words)


def _random_corpus(seed: int) -> tuple[list[str], list[list[str]]]:
    return random_corpus(seed, WORDS, 10)


@pytest.mark.parametrize("word_order", [0, 2])
@pytest.mark.parametrize("name", CASES)
def test_corpus_chrf_equals_sacrebleu_on_edge_cases(name, word_order):
    hyps, refs = CASES[name]
    theirs = sacrebleu.corpus_chrf(hyps, refs, word_order=word_order).score
    assert corpus_chrf(hyps, refs, word_order=word_order) == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("word_order", [0, 2])
def test_random_corpora_equal_sacrebleu(word_order):
    """50 seeded corpora of 1-6 segments with 1-3 reference streams."""
    for seed in range(50):
        hyps, refs = _random_corpus(seed)
        theirs = sacrebleu.corpus_chrf(hyps, refs, word_order=word_order).score
        ours = corpus_chrf(hyps, refs, word_order=word_order)
        assert ours == pytest.approx(theirs, abs=1e-6), (seed, hyps, refs)


def test_options_equal_sacrebleu():
    """Lowercase, whitespace kept, other orders and beta, through sacrebleu's CHRF class."""
    settings = [dict(lowercase=True), dict(whitespace=True), dict(char_order=4, word_order=1),
                dict(beta=1), dict(beta=3, word_order=2)]  # fmt: skip
    for seed, kwargs in enumerate(settings * 4):
        hyps, refs = _random_corpus(200 + seed)
        theirs = sacrebleu.CHRF(**kwargs).corpus_score(hyps, refs).score
        assert corpus_chrf(hyps, refs, **kwargs) == pytest.approx(theirs, abs=1e-6), kwargs


def test_sentence_chrf_equals_sacrebleu():
    rng = random.Random(3)
    for _ in range(50):
        hyp, refs = _random_text(rng), [_random_text(rng) for _ in range(rng.randint(1, 3))]
        theirs = sacrebleu.sentence_chrf(hyp, refs).score
        assert sentence_chrf(hyp, refs) == pytest.approx(theirs, abs=1e-6)


def test_punctuation_split_follows_chrf_plus_plus():
    # sacrebleu's rule (its issue #124): only one mark is split off, the trailing one first.
    assert split_punctuation("(hi) ok. ,x ! a") == ["(hi", ")", "ok", ".", ",", "x", "!", "a"]


def test_name_and_signature_match_sacrebleu():
    hyps, refs = CASES["two references"]
    for word_order in (0, 2):
        metric = sacrebleu.CHRF(word_order=word_order)
        score = metric.corpus_score(hyps, refs)
        assert chrf_name(word_order=word_order) == score.name
        theirs = str(metric.get_signature()).rsplit("|version:", 1)[0]
        assert chrf_signature(2, word_order=word_order) == theirs


def test_identical_text_scores_100_and_bad_input_is_named():
    assert corpus_chrf(["the cat sat"], [["the cat sat"]]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="reference stream 1 has 1 segments"):
        corpus_chrf(["a", "b"], [["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_chrf([], [[]])

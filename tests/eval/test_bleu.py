"""BLEU (llm/eval/bleu.py) equals sacrebleu 2.6's corpus_bleu and sentence_bleu to 1e-6 on
hand-picked edge cases and on seeded random corpora; the 13a tokeniser equals sacrebleu's."""

from __future__ import annotations

import random

import pytest
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from llm.eval.bleu import bleu_signature, corpus_bleu, sentence_bleu, tokenize_13a
from tests.eval.random_text import random_corpus, random_text

# Words that exercise the 13a rules (digits around . , -), case, HTML entities and non-ASCII.
WORDS = ["the", "The", "cat", "sat", "on", "mat", "a", "dog", "3.14", "1,000", "well-known",
         "(hi)", "it's", "café", "naïve", "日本語", "😀", "!", "?", "end.", "&amp;", "x-5",
         "5-6", "\"quoted\"", "a,b", "U.S.", "$5", "<br>"]  # fmt: skip

# (hypotheses, reference streams): refs[j][i] is the j-th reference of hypothesis i.
CASES = {
    "one reference": (["The cat sat on the mat."], [["The cat is on the mat."]]),
    "two references": (
        ["The cat sat on the mat.", "Hello, world!"],
        [["The cat is on the mat.", "Hello world."], ["A cat sat on a mat.", "hello, world!"]],
    ),
    "empty hypothesis": (["", "the cat sat on the mat"], [["a b c", "the cat sat on a mat"]]),
    "all hypotheses empty": (["", ""], [["a b", "c"]]),
    "empty reference line": (["a cat", "the dog ran"], [["", "the dog ran"], ["a cat", ""]]),
    "unicode": (
        ["Ça va très bien, merci 😀", "日本語のテキスト。"],
        [["Ça va bien, merci 😀", "日本語 の テキスト 。"]],
    ),
    "punctuation and numbers": (
        ["It costs $3.14, or 1,000 yen (roughly) - ok? 5-6 items; x.y"],
        [["It costs $3.14 or 1,000 yen (roughly)-ok ? 5 - 6 items ; x . y"]],
    ),
    "hypothesis longer": (
        ["the the the cat cat sat sat on on the mat mat today"],
        [["the cat sat on the mat"]],
    ),
    "hypothesis shorter": (["the cat"], [["the cat sat on the mat"], ["the cat sat"]]),
    "closest length tie": (["a b c d"], [["a b c d e f"], ["a b"]]),
    "no match": (["x y z"], [["a b c"]]),
    "trailing whitespace": (["the cat  \t", " the dog"], [["the cat", "the dog  "]]),
}


def _random_text(rng: random.Random, max_words: int = 12) -> str:
    return random_text(rng, WORDS, max_words)


def _random_corpus(seed: int) -> tuple[list[str], list[list[str]]]:
    return random_corpus(seed, WORDS, 12)


def _assert_same(ours, theirs) -> None:
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    assert ours.precisions == pytest.approx(tuple(theirs.precisions), abs=1e-6)
    assert ours.bp == pytest.approx(theirs.bp, abs=1e-12)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert list(ours.totals) == list(theirs.totals)


def test_tokenizer_equals_sacrebleu_13a():
    reference = Tokenizer13a()
    lines = [" ".join(WORDS), "a..b ,c 3.x x.3 -5 5- a-\nb &quot;&lt;&gt;", "<skipped> ok", ""]
    lines += [_random_text(random.Random(seed), 30) for seed in range(50)]
    for line in lines:
        assert tokenize_13a(line) == reference(line), line


@pytest.mark.parametrize("name", CASES)
def test_corpus_bleu_equals_sacrebleu_on_edge_cases(name):
    hyps, refs = CASES[name]
    ours = corpus_bleu(hyps, refs)
    _assert_same(ours, sacrebleu.corpus_bleu(hyps, refs))
    assert list(ours.counts) == list(sacrebleu.corpus_bleu(hyps, refs).counts)


@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
@pytest.mark.parametrize("effective_order", [False, True])
def test_smoothing_and_effective_order_equal_sacrebleu(smooth, effective_order):
    for seed in range(12):
        hyps, refs = _random_corpus(seed)
        theirs = sacrebleu.corpus_bleu(hyps, refs, smooth_method=smooth,
                                       use_effective_order=effective_order)  # fmt: skip
        ours = corpus_bleu(hyps, refs, smooth=smooth, effective_order=effective_order)
        assert ours.score == pytest.approx(theirs.score, abs=1e-6), (seed, hyps, refs)


def test_random_corpora_equal_sacrebleu():
    """50 seeded corpora of 1-6 segments with 1-3 reference streams, default settings."""
    for seed in range(50):
        hyps, refs = _random_corpus(seed)
        _assert_same(corpus_bleu(hyps, refs), sacrebleu.corpus_bleu(hyps, refs))


def test_lowercase_and_no_tokenizer_equal_sacrebleu():
    for seed in range(20):
        hyps, refs = _random_corpus(100 + seed)
        theirs = sacrebleu.corpus_bleu(hyps, refs, lowercase=True, tokenize="none")
        ours = corpus_bleu(hyps, refs, lowercase=True, tokenize="none")
        assert ours.score == pytest.approx(theirs.score, abs=1e-6)


def test_sentence_bleu_equals_sacrebleu():
    rng = random.Random(7)
    for _ in range(50):
        hyp, refs = _random_text(rng), [_random_text(rng) for _ in range(rng.randint(1, 3))]
        _assert_same(sentence_bleu(hyp, refs), sacrebleu.sentence_bleu(hyp, refs))


def test_identical_corpus_scores_100_and_signature_matches_sacrebleu():
    hyps = ["the cat sat on the mat", "a dog barked at the moon tonight"]
    assert corpus_bleu(hyps, [hyps]).score == pytest.approx(100.0)
    metric = sacrebleu.BLEU()
    metric.corpus_score(hyps, [hyps, hyps])
    theirs = str(metric.get_signature()).rsplit("|version:", 1)[0]
    assert bleu_signature(2) == theirs
    metric = sacrebleu.BLEU(smooth_method="floor", lowercase=True, effective_order=True)
    metric.corpus_score(hyps, [hyps])
    theirs = str(metric.get_signature()).rsplit("|version:", 1)[0]
    assert bleu_signature(1, smooth="floor", lowercase=True, effective_order=True) == theirs


@pytest.mark.parametrize(
    "hyps, refs, message",
    [
        (["a", "b"], [["a"]], "reference stream 0 has 1 segments but there are 2"),
        ("a b", [["a b"]], "hypotheses must be a list"),
        (["a"], ["a"], "list of reference streams"),
        (["a"], [], "list of reference streams"),
        ([], [[]], "no hypotheses"),
    ],
)
def test_bad_input_is_named(hyps, refs, message):
    with pytest.raises(ValueError, match=message):
        corpus_bleu(hyps, refs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(smooth="add-one"), "smooth='add-one'"),
        (dict(tokenize="intl"), "tokenize='intl'"),
        (dict(max_order=0), "max_order=0"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        corpus_bleu(["a"], [["a"]], **kwargs)

"""distinct-n and self-BLEU (llm/eval/diversity.py): hand-computed values, and self-BLEU equal
to the mean of sacrebleu 2.6's sentence_bleu with each text against all the others."""

from __future__ import annotations

import random

import pytest
import sacrebleu

from llm.eval.diversity import distinct_n, self_bleu

TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a bird flew"]


def test_distinct_n_by_hand():
    # unigrams: 15 in all; distinct: the cat sat on mat dog log a bird flew = 10.
    assert distinct_n(TEXTS, 1) == pytest.approx(10 / 15)
    # bigrams: 5 + 5 + 2 = 12; repeated across texts: "sat on", "on the" -> 10 distinct.
    assert distinct_n(TEXTS, 2) == pytest.approx(10 / 12)
    # trigrams never span two texts: "mat the dog" is not one; 4 + 4 + 1 = 9, "sat on the" twice.
    assert distinct_n(TEXTS, 3) == pytest.approx(8 / 9)
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["one", ""], 2) == 0.0


def test_self_bleu_equals_sacrebleu_leave_one_out():
    rng = random.Random(0)
    words = "the cat dog sat on mat log a bird flew over it .".split()
    for max_order in (4, 2):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(8)]
        metric = sacrebleu.BLEU(effective_order=True, max_ngram_order=max_order)
        expected = [metric.sentence_score(t, texts[:i] + texts[i + 1 :]).score
                    for i, t in enumerate(texts)]  # fmt: skip
        got = self_bleu(texts, max_order=max_order)
        assert got == pytest.approx(sum(expected) / len(expected), abs=1e-6)


def test_self_bleu_orders_diversity():
    same = ["the cat sat on the mat"] * 3
    assert self_bleu(same) == pytest.approx(100.0)
    assert self_bleu(TEXTS) < 50.0
    assert self_bleu(["alpha beta gamma", "delta epsilon zeta"]) == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least two texts"):
        self_bleu(["only one"])
    with pytest.raises(ValueError, match="n=0 must be at least 1"):
        distinct_n(TEXTS, 0)
    with pytest.raises(ValueError, match="not one string"):
        distinct_n("a b c", 1)

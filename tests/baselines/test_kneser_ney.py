"""Kneser-Ney and add-k equal nltk.lm on the same counts (1e-9), and MKN's discounts.

nltk's conventions (llm/baselines/ngram.py docstring): sentences padded with n-1 "<s>" and
n-1 "</s>", every k-gram of the padded sentence counted, raw counts only at the top order,
a fixed discount 0.1, no uniform floor. We feed our counter the same padded id sequences
(`bos_id=None`) and compare every held-out n-gram's probability with nltk's `score`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from nltk.lm import KneserNeyInterpolated, Laplace, Lidstone
from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
from nltk.util import ngrams

from llm.baselines.ngram import AddK, KneserNey, count_of_counts, kn_discounts
from llm.baselines.ngram_counts import Documents, count_ngrams, lookup

WORDS = ["the", "king", "queen", "is", "dead", "long", "live", "a", "fool"]


def sentences(n_sent: int, seed: int) -> list[list[str]]:
    """Zipf-ish random sentences with some structure (each word prefers a few successors)."""
    rng = np.random.default_rng(seed)
    follow = rng.dirichlet(np.full(len(WORDS), 0.3), size=len(WORDS))
    out = []
    for _ in range(n_sent):
        w = int(rng.integers(len(WORDS)))
        sent = [WORDS[w]]
        for _ in range(int(rng.integers(1, 9))):
            w = int(rng.choice(len(WORDS), p=follow[w]))
            sent.append(WORDS[w])
        out.append(sent)
    return out


TRAIN, TEST = sentences(120, 0), sentences(30, 1)
# ids: "<s>", "</s>", the words, and one id never used, which plays nltk's "<UNK>" so that
# our vocabulary size V equals nltk's len(vocab) (its words plus "<UNK>").
IDS = {w: i for i, w in enumerate(["<s>", "</s>", *WORDS])}
V = len(IDS) + 1


def padded_ids(sents: list[list[str]], n: int) -> Documents:
    return Documents.from_list([[IDS[w] for w in pad_both_ends(s, n)] for s in sents])


def nltk_model(cls, n: int, **kw):
    lm = cls(order=n, **kw) if cls is not Lidstone else cls(kw.pop("gamma"), n, **kw)
    train, vocab = padded_everygram_pipeline(n, TRAIN)
    lm.fit(train, itertools.chain(vocab, ["<s>", "</s>"]))  # order 1 pads nothing: add them
    assert len(lm.vocab) == V
    return lm


def compare(ours, lm, n: int) -> None:
    """Per-n-gram probabilities and the perplexity, on the held-out padded sentences."""
    test = padded_ids(TEST, n)
    full = test.position_in_doc() >= n - 1  # the positions nltk scores: full n-gram contexts
    p_ours = ours.token_probs(lookup(ours.counts, test))[full]  # order 1 scores position 0 too
    grams = [g for s in TEST for g in ngrams(pad_both_ends(s, n), n)]
    p_nltk = np.array([lm.score(g[-1], g[:-1]) for g in grams])
    assert len(p_nltk) == len(p_ours)
    np.testing.assert_allclose(p_ours, p_nltk, rtol=1e-9, atol=0)
    ppl_ours = math.exp(-np.mean(np.log(p_ours)))
    assert ppl_ours == pytest.approx(lm.perplexity(grams), rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("discount", [0.1, 0.75])
def test_kneser_ney_equals_nltk(n, discount):
    counts = count_ngrams(padded_ids(TRAIN, n), n, V, bos_id=None)
    ours = KneserNey(counts, modified=False, discount=discount, nltk=True)
    compare(ours, nltk_model(KneserNeyInterpolated, n, discount=discount), n)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("gamma", [1.0, 0.05])
def test_add_k_equals_nltk_lidstone_and_laplace(n, gamma):
    counts = count_ngrams(padded_ids(TRAIN, n), n, V, bos_id=None)
    lm = nltk_model(Laplace, n) if gamma == 1.0 else nltk_model(Lidstone, n, gamma=gamma)
    compare(AddK(counts, gamma), lm, n)


def test_nltk_mode_differs_from_chen_goodman():
    """The conventions matter: C&G's KN (estimated discounts, uniform floor) is another model."""
    n = 3
    counts = count_ngrams(padded_ids(TRAIN, n), n, V, bos_id=None)
    test = padded_ids(TEST, n)
    nltk_like = KneserNey(counts, modified=False, nltk=True).logprobs(test)
    chen_goodman = KneserNey(counts, modified=False).logprobs(test)
    assert np.max(np.abs(nltk_like - chen_goodman)) > 1e-3


def test_modified_discounts_follow_chen_goodman():
    """D1, D2, D3+ from count-of-counts (C&G 1998 eq. 26), worked by hand:
    n1..n4 = 4, 2, 2, 1 -> Y = 4 / 8 = 0.5, D1 = 1 - 2 * 0.5 * 2/4 = 0.5,
    D2 = 2 - 3 * 0.5 * 2/2 = 0.5, D3+ = 3 - 4 * 0.5 * 1/2 = 2.0."""
    a = np.array([1, 1, 1, 1, 2, 2, 3, 3, 4, 7])
    assert list(count_of_counts(a, 4)) == [0, 4, 2, 2, 1]
    np.testing.assert_allclose(kn_discounts(a, modified=True), [0.0, 0.5, 0.5, 2.0])
    np.testing.assert_allclose(kn_discounts(a, modified=False), [0.0, 0.5, 0.5, 0.5])

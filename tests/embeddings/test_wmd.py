"""Similarity: word mover's distance against brute force over transport plans, the relaxed
bound below it, 3CosAdd and nearest neighbours on vectors built to have the answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize

from llm.embeddings.similarity import (
    analogy,
    earth_movers,
    nearest,
    relaxed_bound,
    rwmd,
    sentence_cosine,
    transport_cost,
    wmd,
)
from llm.embeddings.vectors import WordVectors


def vectors(words, rows):
    rows = np.asarray(rows, dtype=np.float32)
    return WordVectors(tuple(words), rows, np.ones(len(words), np.int64), {})


@pytest.mark.parametrize("n,seed", [(2, 0), (3, 1), (4, 2), (5, 3)])
def test_uniform_transport_equals_the_best_permutation(n, seed):
    """With n words of weight 1/n each side, an optimal plan is a permutation (Birkhoff-von
    Neumann), so the LP's optimum is the best of the n! assignments, divided by n."""
    rng = np.random.default_rng(seed)
    cost = transport_cost(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)))
    brute = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
    d = np.full(n, 1.0 / n)
    assert earth_movers(d, d, cost) == pytest.approx(brute / n, abs=1e-9)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert earth_movers(d, d, cost) == pytest.approx(cost[rows, cols].sum() / n, abs=1e-9)


def test_unequal_weights_two_by_one():
    """All mass goes to the single word: the distance is the weighted mean of the costs."""
    cost = np.array([[1.0], [3.0]])
    assert earth_movers(np.array([0.25, 0.75]), np.array([1.0]), cost) == pytest.approx(2.5)


def test_relaxed_bound_never_exceeds_wmd_and_is_tight_for_one_word():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n_i, n_j = rng.integers(1, 6, size=2)
        d, e = rng.dirichlet(np.ones(n_i)), rng.dirichlet(np.ones(n_j))
        cost = transport_cost(rng.normal(size=(n_i, 4)), rng.normal(size=(n_j, 4)))
        exact = earth_movers(d, e, cost)
        assert relaxed_bound(d, e, cost) <= exact + 1e-9
        if n_j == 1:
            assert relaxed_bound(d, e, cost) == pytest.approx(exact)


def test_text_distances_from_vectors():
    wv = vectors(["king", "queen", "apple", "the"], [[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5]])
    assert wmd(wv, "the king", "The King!") == pytest.approx(0.0, abs=1e-9)
    near, far = wmd(wv, "the king", "the queen"), wmd(wv, "the king", "the apple")
    assert 0 < near < far
    # half the mass moves king -> queen: |(1,0) - (0.9,0.1)| / 2
    assert near == pytest.approx(np.hypot(0.1, 0.1) / 2, rel=1e-6)
    assert rwmd(wv, "king apple", "queen") <= wmd(wv, "king apple", "queen") + 1e-9
    with pytest.raises(ValueError, match="vocabulary"):
        wmd(wv, "zzz", "king")
    assert sentence_cosine(wv, "king", "queen") > sentence_cosine(wv, "king", "apple")


def test_analogy_and_nearest_find_the_built_in_answer():
    # gender along axis 0, royalty along axis 1, noise words elsewhere
    words = ["man", "woman", "king", "queen", "apple", "pear"]
    rows = [[1, 0, 0.1], [-1, 0, 0.1], [1, 1, 0], [-1, 1, 0], [0, -1, 1], [0.1, -1, 1]]
    wv = vectors(words, rows)
    assert analogy(wv, "man", "woman", "king") == "queen"
    assert analogy(wv, "king", "queen", "man") == "woman"
    assert [w for w, _ in nearest(wv, "apple", 2)] == ["pear", "man"]
    with pytest.raises(KeyError, match="zzz"):
        analogy(wv, "man", "zzz", "king")

"""Our analogy and paraphrase sets: their size and balance, and the scores computed on them
(AUC against scikit-learn's roc_auc_score; analogy accuracy on vectors with known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from llm.embeddings.eval_sets import (
    ANALOGY_PAIRS,
    PARAPHRASES,
    analogy_accuracy,
    analogy_items,
    auc,
    paraphrase_auc,
)
from llm.embeddings.vectors import WordVectors


def test_set_sizes():
    items = analogy_items()
    assert len(items) == 56 and len(set(items)) == 56
    assert all(len({a, b, c, d}) == 4 for _, a, b, c, d in items)
    labels = [y for _, _, y in PARAPHRASES]
    assert len(PARAPHRASES) == 30 and sum(labels) == 15


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    labels = rng.integers(0, 2, size=40)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="both labels"):
        auc([0.1, 0.2], [1, 1])


def test_paraphrase_auc_of_perfect_and_inverted_scores():
    truth = {(a, b): y for a, b, y in PARAPHRASES}
    assert paraphrase_auc(lambda a, b: truth[(a, b)]) == 1.0
    assert paraphrase_auc(lambda a, b: -truth[(a, b)]) == 0.0


def test_analogy_accuracy_counts_missing_words_as_wrong():
    """Each first word its own axis, each relation an axis: b = e_a + o_relation. 3CosAdd then
    scores the right d at 1/2 + 1/sqrt(2) and any other word at most 1/sqrt(2), so every
    complete question is right; the "eth" relation's second words are left out (all wrong)."""
    relations = list(ANALOGY_PAIRS)
    firsts = sorted({a for pairs in ANALOGY_PAIRS.values() for a, _ in pairs})
    dim = len(firsts) + len(relations)
    table = {a: np.eye(dim)[k] for k, a in enumerate(firsts)}
    for r, relation in enumerate(relations):
        for a, b in ANALOGY_PAIRS[relation]:
            if relation != "eth":
                table[b] = np.eye(dim)[firsts.index(a)] + np.eye(dim)[len(firsts) + r]
    words = sorted(table)
    rows = np.array([table[w] for w in words], np.float32)
    scores = analogy_accuracy(WordVectors(tuple(words), rows, np.ones(len(words), np.int64)))
    assert scores["eth"] == 0.0
    assert scores["gender"] == scores["plural"] == scores["past"] == 1.0
    assert scores["all"] == pytest.approx(1 - 2 * len(ANALOGY_PAIRS["eth"]) / 56)

"""Exact and MinHash-LSH near-duplicate detection against the all-pairs Jaccard reference."""

from __future__ import annotations

import numpy as np

from llm.data.dedup import (
    exact_duplicates,
    jaccard,
    minhash_signature,
    near_duplicates,
    near_duplicates_reference,
    shingles,
)


def _edit(text: str, rng: np.random.Generator, n: int) -> str:
    words = text.split(" ")
    for i in rng.choice(len(words), size=n, replace=False):
        words[i] = "edited"
    return " ".join(words)


def test_exact_duplicates():
    assert exact_duplicates(["a", "b", "a", "c", "b", "a"]) == [2, 4, 5]


def test_minhash_estimates_jaccard(random_text):
    rng = np.random.default_rng(0)
    a = random_text(rng, 400)
    b = _edit(a, rng, 20)
    exact = jaccard(shingles(a, 5), shingles(b, 5))
    est = np.mean(minhash_signature(a, 5, 512) == minhash_signature(b, 5, 512))
    assert 0.5 < exact < 0.9  # the edit leaves a mid-range similarity
    assert abs(est - exact) < 0.06  # std of the estimate is sqrt(J(1-J)/512) ~ 0.02


def test_planted_near_duplicates_found_and_distinct_documents_kept(random_text):
    rng = np.random.default_rng(1)
    originals = [random_text(rng, 300) for _ in range(40)]
    texts = list(originals)
    planted = {}
    for src in (3, 17, 25):
        planted[len(texts)] = src
        texts.append(_edit(originals[src], rng, 3))  # Jaccard ~0.9
    texts.append(_edit(originals[8], rng, 150))  # half the words changed: distinct
    found = near_duplicates(texts, threshold=0.8, perms=128, bands=16, k=5)
    assert found == sorted(planted)
    assert found == near_duplicates_reference(texts, threshold=0.8, k=5)

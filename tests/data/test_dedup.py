"""Exact and MinHash-LSH near-duplicate detection against the all-pairs Jaccard reference."""

from __future__ import annotations

import numpy as np
import pytest

from llm.data.dedup import (
    CHUNK_CHARS,
    _hash64,
    _mix64,
    exact_duplicates,
    jaccard,
    minhash_signature,
    near_duplicates,
    near_duplicates_reference,
    shingle_batches,
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


# Cut characters next to words that change under lower() (final sigma, dotted capital I) and
# characters that must not be cut at ("'", ".", ":" are case-ignorable; "_" is a word char).
HOSTILE = ["ΟΔΟΣ", "ΣΑΣ.", "İstanbul", "x'Σ", "a_b", "Σ:Σ", "co-op", "(ΚΑΛΟΣ)", "e\u0301t\u00e9",
           "1,000", "\u00a0", "\n", "  ", "Straße", "ǅemal", "ǈ", "a/b/c", "ΣΣ;", "σ", "ΑΣ.Β",
           "ΑΣ'Β"]  # fmt: skip


def _hostile_text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(HOSTILE + [f"w{i}" for i in range(50)], size=n))


@pytest.mark.parametrize("chunk_chars", [1, 7, 64])
def test_shingle_batches_are_the_shingles_of_the_whole_text(chunk_chars):
    rng = np.random.default_rng(0)
    for k in (1, 3, 5):
        for n in (0, 1, 2, 4, 5, 6, 300):
            text = _hostile_text(rng, n)
            batches = list(shingle_batches(text, k, chunk_chars))
            assert {s for b in batches for s in b} == shingles(text, k), (k, n)
    one_word = "Σ" * 500  # no cut point at all: one piece, one shingle
    assert list(shingle_batches(one_word, 5, 7)) == [[one_word.lower()]]


def test_signature_of_a_long_line_equals_the_unchunked_formula():
    """A 330k-character single line (several pieces) gets exactly the signature of the
    one-shot formula over `shingles` (what minhash_signature computed before streaming)."""
    rng = np.random.default_rng(1)
    text = _hostile_text(rng, 80_000).replace("\n", " ")
    assert len(text) > 4 * CHUNK_CHARS and "\n" not in text
    salts = np.random.default_rng(3).integers(0, 2**63, size=64, dtype=np.uint64)
    x = _hash64(shingles(text, 5))
    want = _mix64(salts[:, None] ^ x[None, :]).min(axis=1)
    np.testing.assert_array_equal(minhash_signature(text, 5, 64, seed=3), want)

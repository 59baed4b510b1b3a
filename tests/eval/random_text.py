"""Seeded random texts for the property-style parity tests of the generation metrics."""

from __future__ import annotations

import random
from collections.abc import Sequence


def random_text(rng: random.Random, words: Sequence[str], max_words: int) -> str:
    """0 to max_words words drawn from `words`, joined by spaces (empty texts included)."""
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, max_words)))


def random_corpus(
    seed: int, words: Sequence[str], max_words: int
) -> tuple[list[str], list[list[str]]]:
    """(1-6 hypotheses, 1-3 reference streams of as many lines), sacrebleu's refs layout."""
    rng = random.Random(seed)
    n, n_refs = rng.randint(1, 6), rng.randint(1, 3)
    hyps = [random_text(rng, words, max_words) for _ in range(n)]
    return hyps, [[random_text(rng, words, max_words) for _ in range(n)] for _ in range(n_refs)]

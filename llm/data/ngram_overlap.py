"""Word n-gram overlap of short texts (items) with a stream of documents, in one pass.

An item's n-grams are the word n-grams of llm/data/dedup.py `shingles`: lower-cased `\\w+`
runs, so case, punctuation, whitespace and line breaks do not matter. An item of fewer than n
words is one n-gram of all its words (dedup's rule), found when a document holds those words in
a row. n-grams never span two documents. Only the items' n-grams are held (one set per n-gram
length in use); each document is read in pieces (dedup `shingle_batches`) with the last words
carried over, so a long document is never split into all its n-grams at once.

Used by llm/data/mc_tasks.py (a test question that repeats few-shot-side text is dropped) and
llm/eval/contamination.py (the contamination report of a task against a training corpus).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from llm.data.dedup import shingle_batches, shingles


@dataclasses.dataclass(frozen=True)
class Overlap:
    ngrams: int  # distinct n-grams of the item (0 when it has no word)
    found: int  # of them, found in some document
    words: int  # words of the item

    @property
    def fraction(self) -> float:
        return self.found / self.ngrams if self.ngrams else 0.0


@dataclasses.dataclass(frozen=True)
class OverlapScan:
    items: tuple[Overlap, ...]  # in input order
    docs: int  # documents read
    words: int  # words read


def words_of(text: str) -> list[str]:
    """The lower-cased words of `text`, tokenised as dedup's shingles are."""
    return [w for batch in shingle_batches(text, 1) for w in batch if w]


def _scan(text: str, wanted: dict[int, set[str]], found: set[str]) -> int:
    """Adds to `found` the wanted m-grams (for each length m) of one document, read piece by
    piece with the last words carried over; returns the document's word count."""
    keep, carry, count = max(wanted) - 1, [], 0
    for batch in shingle_batches(text, 1):  # the words of one piece
        new = [w for w in batch if w]
        count += len(new)
        words = carry + new
        for m, grams in wanted.items():
            start = max(len(carry) - m + 1, 0)  # m-grams ending in the new words only
            found.update(grams.intersection(
                " ".join(words[i : i + m]) for i in range(start, len(words) - m + 1)))  # fmt: skip
        carry = words[max(len(words) - keep, 0) :] if keep else []
    return count


def ngram_overlap(items: Sequence[str], texts: Iterable[str], n: int) -> OverlapScan:
    """How many of each item's word n-grams occur in `texts` (module docstring)."""
    if n < 1:
        raise ValueError(f"n-gram overlap: n={n} must be at least 1")
    grams, wanted = [], {}
    for text in items:
        words = len(words_of(text))
        g = shingles(text, n) if words else set()
        grams.append((g, words))
        if words:
            wanted.setdefault(min(words, n), set()).update(g)
    found: set[str] = set()
    docs = n_words = 0
    for text in texts:
        docs += 1
        n_words += _scan(text, wanted, found) if wanted else len(words_of(text))
    items_out = tuple(Overlap(len(g), len(g & found), words) for g, words in grams)
    return OverlapScan(items_out, docs, n_words)

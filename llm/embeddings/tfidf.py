"""TF-IDF document vectors, defined as scikit-learn's `TfidfVectorizer` defines them.

Sparck Jones 1972 (inverse document frequency); Salton and Buckley 1988 (term weighting). The
formulas are scikit-learn's (`sklearn.feature_extraction.text.TfidfTransformer`), so the two
agree to rounding on the same tokens (tests/embeddings/test_tfidf.py):
* tf = the raw count of a term in the document, or 1 + ln(count) with `sublinear_tf`;
* idf = ln((1 + n) / (1 + df)) + 1 with `smooth_idf` (the default: as if one extra document
  held every term once), else ln(n / df) + 1; n documents, df those holding the term;
* each row tf * idf, then divided by its L2 norm (`norm="l2"`) or left as is (`norm=None`).
Terms are the fitted documents' words (corpus.tokenize unless another tokenizer is given), in
sorted order as scikit-learn's `vocabulary_`; unknown words of transformed documents are
ignored. Rows are scipy CSR matrices (documents x terms), float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse

from llm.embeddings.corpus import tokenize

NORMS = ("l2", None)


@dataclasses.dataclass(frozen=True)
class TfidfConfig:
    smooth_idf: bool = True  # idf = ln((1+n)/(1+df)) + 1, else ln(n/df) + 1
    sublinear_tf: bool = False  # tf = 1 + ln(count) instead of count
    norm: str | None = "l2"  # rows scaled to unit L2 norm, or None

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"TfidfConfig.norm={self.norm!r}; choose from {NORMS}")


@dataclasses.dataclass(frozen=True)
class Tfidf:
    terms: tuple[str, ...]  # column -> term, sorted
    idf_T: np.ndarray  # [T] float64
    cfg: TfidfConfig
    tokenizer: Callable[[str], list[str]] = tokenize

    @classmethod
    def fit(cls, documents: Sequence[str], cfg: TfidfConfig = TfidfConfig(),
            tokenizer: Callable[[str], list[str]] = tokenize) -> Tfidf:  # fmt: skip
        token_lists = [tokenizer(d) for d in documents]
        terms = tuple(sorted({t for tokens in token_lists for t in tokens}))
        if not terms:
            raise ValueError(f"no term in the {len(documents)} documents to fit TF-IDF on")
        index = {t: i for i, t in enumerate(terms)}
        df_T = np.zeros(len(terms), dtype=np.float64)
        for tokens in token_lists:
            df_T[[index[t] for t in set(tokens)]] += 1
        n = float(len(documents))
        smooth = 1.0 if cfg.smooth_idf else 0.0
        idf_T = np.log((n + smooth) / (df_T + smooth)) + 1.0
        return cls(terms, idf_T, cfg, tokenizer)

    def counts(self, documents: Sequence[str]) -> scipy.sparse.csr_matrix:
        """[N, T] raw term counts (unknown terms dropped)."""
        index = {t: i for i, t in enumerate(self.terms)}
        rows, cols = [], []
        for r, doc in enumerate(documents):
            ids = [index[t] for t in self.tokenizer(doc) if t in index]
            rows += [r] * len(ids)
            cols += ids
        data = np.ones(len(rows), dtype=np.float64)
        shape = (len(documents), len(self.terms))
        return scipy.sparse.csr_matrix((data, (rows, cols)), shape=shape)  # sums duplicates

    def transform(self, documents: Sequence[str]) -> scipy.sparse.csr_matrix:
        """[N, T] TF-IDF rows of `documents` (the module docstring gives the formulas)."""
        x = self.counts(documents)
        if self.cfg.sublinear_tf:
            x.data = 1.0 + np.log(x.data)
        x = x.multiply(self.idf_T[None, :]).tocsr()
        if self.cfg.norm == "l2":
            norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
            x = scipy.sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x
        return x.tocsr()


def tfidf_cosine(model: Tfidf, a: str, b: str) -> float:
    """Cosine similarity of two texts' TF-IDF rows (0 when either has no known term)."""
    rows = model.transform([a, b])
    na, nb = (float(np.sqrt(rows[i].multiply(rows[i]).sum())) for i in (0, 1))
    if na == 0 or nb == 0:
        return 0.0
    return float(rows[0].multiply(rows[1]).sum() / (na * nb))

"""Similarity with word vectors: cosine, nearest neighbours, analogies, word mover's distance.

Design choices:
* Cosine similarity everywhere, on vectors scaled to unit length.
* Analogies a:b::c:? by 3CosAdd (Mikolov, Yih and Zweig 2013, "Linguistic Regularities in
  Continuous Space Word Representations"; named by Levy and Goldberg 2014): the word d
  maximising cos(d, b - a + c) over the vocabulary, the three question words excluded.
* Word mover's distance (Kusner et al. 2015, "From Word Embeddings To Document Distances"):
  texts as normalised bags of words (nBOW, words outside the vocabulary dropped), cost c(i, j)
  the Euclidean distance of the two words' vectors, and the distance the optimal-transport
  linear program min_T sum T_ij c(i, j) s.t. sum_j T_ij = d_i, sum_i T_ij = d'_j, T >= 0,
  solved exactly with scipy.optimize.linprog (HiGHS). The relaxed bound RWMD (ibid., section 4)
  drops one constraint at a time: max(sum_i d_i min_j c(i, j), sum_j d'_j min_i c(i, j)) <= WMD.
* Sentence similarity by mean embedding: the cosine of the mean vectors of the known words.
"""

from __future__ import annotations

import collections

import numpy as np
import scipy.optimize

from llm.embeddings.corpus import tokenize
from llm.embeddings.vectors import WordVectors


def cosine(a_D: np.ndarray, b_D: np.ndarray) -> float:
    """cos(a, b); 0 when either is the zero vector."""
    na, nb = np.linalg.norm(a_D), np.linalg.norm(b_D)
    return 0.0 if na == 0 or nb == 0 else float(a_D @ b_D / (na * nb))


def nearest(wv: WordVectors, word: str, k: int = 10) -> list[tuple[str, float]]:
    """The k words of highest cosine with `word` (itself excluded), best first."""
    unit_VD = wv.unit()
    (i,) = wv.ids([word], "query word")
    sims_V = unit_VD @ unit_VD[i]
    sims_V[i] = -np.inf
    top = np.argsort(-sims_V, kind="stable")[:k]
    return [(wv.words[j], float(sims_V[j])) for j in top]


def analogy(wv: WordVectors, a: str, b: str, c: str, unit_VD: np.ndarray | None = None) -> str:
    """3CosAdd: argmax_d cos(d, b - a + c), d not in {a, b, c}."""
    unit_VD = wv.unit() if unit_VD is None else unit_VD
    ia, ib, ic = wv.ids([a, b, c], f"analogy {a}:{b}::{c}:?")
    sims_V = unit_VD @ (unit_VD[ib] - unit_VD[ia] + unit_VD[ic])
    sims_V[[ia, ib, ic]] = -np.inf
    return wv.words[int(np.argmax(sims_V))]


def nbow(wv: WordVectors, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids_W, weights_W): the distinct known words of `text` and their normalised counts."""
    index = wv.index
    counts = collections.Counter(index[w] for w in tokenize(text) if w in index)
    if not counts:
        raise ValueError(f"no word of {text!r} is in the vocabulary; WMD needs one")
    ids = np.array(sorted(counts))
    weights = np.array([counts[i] for i in ids], dtype=np.float64)
    return ids, weights / weights.sum()


def transport_cost(x_ID: np.ndarray, y_JD: np.ndarray) -> np.ndarray:
    """[I, J] Euclidean distances between rows."""
    diff_IJD = x_ID[:, None, :].astype(np.float64) - y_JD[None, :, :].astype(np.float64)
    return np.sqrt(np.square(diff_IJD).sum(-1))


def earth_movers(d_I: np.ndarray, e_J: np.ndarray, cost_IJ: np.ndarray) -> float:
    """min_T <T, cost> over T >= 0 with row sums d and column sums e (exact LP, HiGHS)."""
    n_i, n_j = cost_IJ.shape
    rows = np.kron(np.eye(n_i), np.ones((1, n_j)))  # sum_j T_ij
    cols = np.kron(np.ones((1, n_i)), np.eye(n_j))  # sum_i T_ij
    res = scipy.optimize.linprog(
        cost_IJ.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([d_I, e_J]),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"word mover's LP failed: {res.message}")
    return float(res.fun)


def relaxed_bound(d_I: np.ndarray, e_J: np.ndarray, cost_IJ: np.ndarray) -> float:
    """RWMD: max of the two one-constraint relaxations, a lower bound of the LP's optimum."""
    return float(max(d_I @ cost_IJ.min(axis=1), e_J @ cost_IJ.min(axis=0)))


def wmd(wv: WordVectors, a: str, b: str) -> float:
    """Word mover's distance between two texts (exact)."""
    (ia, da), (ib, db) = nbow(wv, a), nbow(wv, b)
    vectors = wv.vectors_VD
    return earth_movers(da, db, transport_cost(vectors[ia], vectors[ib]))


def rwmd(wv: WordVectors, a: str, b: str) -> float:
    """Relaxed word mover's distance between two texts (a lower bound of `wmd`)."""
    (ia, da), (ib, db) = nbow(wv, a), nbow(wv, b)
    vectors = wv.vectors_VD
    return relaxed_bound(da, db, transport_cost(vectors[ia], vectors[ib]))


def mean_vector(wv: WordVectors, text: str) -> np.ndarray:
    """[D] mean vector of the known words of `text` (zeros when none is known)."""
    index = wv.index
    ids = [index[w] for w in tokenize(text) if w in index]
    if not ids:
        return np.zeros(wv.vectors_VD.shape[1])
    return wv.vectors_VD[ids].astype(np.float64).mean(0)


def sentence_cosine(wv: WordVectors, a: str, b: str) -> float:
    """Cosine of the two texts' mean word vectors."""
    return cosine(mean_vector(wv, a), mean_vector(wv, b))

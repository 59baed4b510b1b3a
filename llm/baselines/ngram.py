"""Count-based n-gram language models over token ids: add-k, Katz backoff, Kneser-Ney.

Every model predicts token p of a document from the previous n-1 tokens of the same document
(fewer near its start: a document is BOS ... EOS and nothing is counted or conditioned across
documents). The vocabulary is the tokenizer's V ids, so no token is out of vocabulary; the
lowest order of every smoothed model is interpolated with (or backs off to) the uniform 1/V.

Models (Chen & Goodman 1998, "An empirical study of smoothing techniques for language
modeling", TR-10-98, is the reference for all of them):
- `AddK`: (c(h w) + k) / (c(h) + k V) at the highest order the document offers (Lidstone;
  k = 1 is Laplace). Order 1 is the add-k unigram.
- `KatzBackoff`: Katz (1987) backoff with Good-Turing discounts d_r for counts r <= 5 (C&G
  eq. 11-12); seen n-grams get d_r c / c(h), unseen ones the left-over mass spread over the
  lower order, renormalised over the unseen words (so every distribution sums to one). Katz
  leaves no mass where an order's Good-Turing estimates are unusable (some n_r = 0 or d_r
  outside (0, 1], as for byte unigrams) or where every word after h has a count above 5: an
  unseen byte there would get probability 0. Those contexts use absolute discounting
  c - D, D = min(n1 / (n1 + 2 n2), 0.5) instead (Ney, Essen & Kneser 1994).
- `KneserNey`: interpolated Kneser-Ney (Kneser & Ney 1995; C&G sec. 3.5):
      p_k(w | h) = max(a(h w) - D(a), 0) / A(h) + gamma(h) p_{k-1}(w | h'),
      gamma(h) = sum_{w: a(h w) > 0} D(a(h w)) / A(h),  A(h) = sum_w a(h w),
  with a = raw counts at the highest order and for n-grams starting with BOS, and continuation
  counts N1+(. h w) below (the KenLM convention, Heafield et al. 2013). `modified=False`: one
  discount per order D = n1 / (n1 + 2 n2); `modified=True` (MKN, C&G sec. 4.1.6): D1, D2, D3+
  from that order's count-of-counts (of the adjusted counts, as KenLM), Y = n1 / (n1 + 2 n2),
  D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. A context never followed in
  training passes p_{k-1} through unchanged.

`KneserNey(nltk=True)` reproduces `nltk.lm.KneserNeyInterpolated` exactly (tests compare to
1e-9). nltk differs from C&G in four ways: (1) one fixed discount (0.1) at every order > 1;
(2) its unigram level is N1+(. w) / N1+(. .) with no discount and no uniform floor, so a word
never seen after a context has probability 0; (3) gamma counts the types that follow h with a
*raw* count (D N1+(h .) / A(h)) even at the lower orders, where C&G count types with a
positive continuation count; (4) no BOS exception: nltk pads every sentence with n-1 "<s>" and
n-1 "</s>" (`padded_everygram_pipeline`) and uses raw counts only at the highest order. Feed
the same padded sequences to `count_ngrams(..., bos_id=None)` and the counts are nltk's.
Likewise `AddK` equals `nltk.lm.Lidstone` (`Laplace` for k = 1) when nltk's vocabulary has V
entries (its words plus "<UNK>").
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm.baselines.ngram_counts import Documents, Lookup, NgramCounts, count_ngrams, lookup

METHODS = ("addk", "katz", "kn", "mkn")


def count_of_counts(values: np.ndarray, upto: int) -> np.ndarray:
    """[upto + 1] n_r = number of entries with value exactly r (r = 0 .. upto)."""
    return np.bincount(np.minimum(values, upto + 1).astype(np.int64), minlength=upto + 2)[:-1]


class NgramLM(abc.ABC):
    """Shared API: `logprobs` over documents, `prob`, `next_token_probs`, `perplexity`."""

    counts: NgramCounts

    @property
    def order(self) -> int:
        return self.counts.order

    @property
    def vocab_size(self) -> int:
        return self.counts.vocab_size

    @abc.abstractmethod
    def token_probs(self, found: Lookup) -> np.ndarray:
        """[T] p(token p | its history) for every position of the looked-up documents."""

    def logprobs(self, docs: Documents | Sequence[Sequence[int]]) -> np.ndarray:
        """[T] natural-log p(token | previous tokens of its document); the first token of each
        document is given, not predicted (its entry is 0.0), as BOS is in training."""
        docs = docs if isinstance(docs, Documents) else Documents.from_list(docs)
        found = lookup(self.counts, docs)
        with np.errstate(divide="ignore"):
            return np.where(found.pos > 0, np.log(self.token_probs(found)), 0.0)

    def next_token_probs(self, context: Sequence[int]) -> np.ndarray:
        """[V] p(w | context) for every token w. Only the last n-1 tokens matter; a shorter
        context is a document start (the model uses the orders it reaches)."""
        keep = self.order - 1
        ctx = [int(t) for t in context][len(context) - keep :] if keep else []
        docs = Documents.from_list([[*ctx, w] for w in range(self.vocab_size)])
        return self.token_probs(lookup(self.counts, docs))[docs.starts[1:] - 1]

    def prob(self, context: Sequence[int], token: int) -> float:
        """p(token | context), see `next_token_probs`."""
        return float(self.next_token_probs(context)[token])

    def perplexity(self, docs: Documents | Sequence[Sequence[int]]) -> float:
        """exp(mean negative log-likelihood per predicted token)."""
        docs = docs if isinstance(docs, Documents) else Documents.from_list(docs)
        n = len(docs) - (len(docs.starts) - 1)
        return math.exp(-float(self.logprobs(docs).sum()) / n)


def _at(values: np.ndarray, ids: np.ndarray, default: float = 0.0) -> np.ndarray:
    """values[ids] where ids >= 0, `default` where ids == -1."""
    if len(values) == 0:
        return np.full(len(ids), default, np.float64)
    return np.where(ids >= 0, values[np.maximum(ids, 0)], default)


def _per_context(table, weights: np.ndarray) -> np.ndarray:
    """[n_contexts] sum of `weights` over the k-grams of each context."""
    return np.bincount(table.context, weights.astype(np.float64), minlength=table.n_contexts)


@dataclass
class AddK(NgramLM):
    """(c(h w) + k) / (c(h) + k V), h = the last min(n-1, available) tokens; k=1: Laplace."""

    counts: NgramCounts
    k: float = 1.0

    def __post_init__(self):
        if self.k <= 0:
            raise ValueError(f"add-k smoothing needs k > 0, got k={self.k}")
        self.totals = [_per_context(t, t.count) for t in self.counts.tables]

    def token_probs(self, found: Lookup) -> np.ndarray:
        p = np.zeros(len(found.pos))
        for k in range(1, self.order + 1):  # higher orders overwrite where they fit
            c = _at(self.counts.tables[k - 1].count, found.gram[k - 1])
            n = _at(self.totals[k - 1], found.ctx[k - 1])
            p = np.where(found.fits(k), (c + self.k) / (n + self.k * self.vocab_size), p)
        return p


def good_turing_ratios(count: np.ndarray, top: int = 5) -> np.ndarray | None:
    """[top + 1] Katz's discount ratios d_r for r = 1..top (index 0 unused; C&G eq. 12),
    or None where the Good-Turing estimates are unusable (a zero n_r, or d_r not in (0, 1])."""
    n = count_of_counts(count, top + 1).astype(np.float64)
    if np.any(n[1 : top + 2] == 0):
        return None
    r = np.arange(1, top + 1)
    r_star = (r + 1) * n[2 : top + 2] / n[1 : top + 1]
    common = (top + 1) * n[top + 1] / n[1]
    d = (r_star / r - common) / (1.0 - common)
    if not np.all((d > 0) & (d <= 1)):
        return None
    return np.concatenate([[1.0], d])


def absolute_discount(count: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2) (Ney, Essen & Kneser 1994), at most 0.5 so a singleton keeps half
    its count (0.5 where the order has no singletons)."""
    n = count_of_counts(count, 2)
    return min(n[1] / (n[1] + 2 * n[2]), 0.5) if n[1] > 0 else 0.5


def katz_discounted(t, total: np.ndarray, top: int) -> np.ndarray:
    """[G] discounted counts d_r r of one order: Good-Turing ratios, or c - D for the contexts
    (all of them where the ratios are unusable) whose Good-Turing counts leave no mass."""
    absolute = t.count - absolute_discount(t.count)
    ratios = good_turing_ratios(t.count, top)
    if ratios is None:
        return absolute
    katz = np.where(t.count <= top, ratios[np.minimum(t.count, top)], 1.0) * t.count
    no_mass = 1.0 - _per_context(t, katz) / np.maximum(total, 1) < 1e-9  # [contexts]
    return np.where(no_mass[t.context], absolute, katz)


@dataclass
class KatzBackoff(NgramLM):
    """Katz backoff: d_r c(h w) / c(h) if seen, else beta(h) p_{k-1}(w | h') (order 0: 1/V).

    Good-Turing ratios d_r for r <= `top` (larger counts are kept whole). Where they leave no
    mass for unseen words (the order's GT estimates are unusable, or every word after h has a
    count above `top`) the context's seen words are absolutely discounted instead (c - D)."""

    counts: NgramCounts
    top: int = 5  # Good-Turing discounts counts 1..top; larger counts are trusted as they are

    def __post_init__(self):
        V, lower = self.vocab_size, None
        self.p_seen, self.beta, self.totals = [], [], []
        for t in self.counts.tables:
            total = _per_context(t, t.count)
            discounted = katz_discounted(t, total, self.top)
            full = _per_context(t, np.ones(len(t)))[t.context] == V  # every word seen after h
            p_seen = np.where(full, t.count, discounted) / total[t.context]
            p_lower = np.full(len(t), 1.0 / V) if lower is None else lower[t.suffix]
            left, left_lower = 1.0 - _per_context(t, p_seen), 1.0 - _per_context(t, p_lower)
            beta = np.where(left_lower > 1e-12, left / np.maximum(left_lower, 1e-12), 0.0)
            self.p_seen.append(p_seen)
            self.beta.append(np.maximum(beta, 0.0))
            self.totals.append(total)
            lower = p_seen

    def token_probs(self, found: Lookup) -> np.ndarray:
        p = np.full(len(found.pos), 1.0 / self.vocab_size)
        for k in range(1, self.order + 1):
            ctx, gram = found.ctx[k - 1], found.gram[k - 1]
            seen_ctx = found.fits(k) & (_at(self.totals[k - 1], ctx) > 0)
            backed_off = np.where(seen_ctx, _at(self.beta[k - 1], ctx, 1.0) * p, p)
            p = np.where(gram >= 0, _at(self.p_seen[k - 1], gram), backed_off)
        return p


def kn_discounts(a: np.ndarray, modified: bool) -> np.ndarray:
    """[4] D for adjusted counts 0, 1, 2, 3+ of one order (C&G sec. 4.1.6 / Ney et al. 1994).

    Falls back to the single discount Y = n1 / (n1 + 2 n2) for every count where the
    count-of-counts leave an MKN discount undefined or outside (0, r]."""
    n = count_of_counts(a, 4).astype(np.float64)
    y = n[1] / (n[1] + 2 * n[2]) if n[1] > 0 else 0.5
    single = np.array([0.0, y, y, y])
    if not modified:
        return single
    if np.any(n[1:5] == 0):
        return single
    d = np.array([0.0, 1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3]])
    return d if np.all((d[1:] > 0) & (d[1:] <= np.arange(1, 4))) else single


@dataclass
class KneserNey(NgramLM):
    """Interpolated Kneser-Ney; `modified`: three discounts (MKN); `nltk`: nltk's conventions
    (see the module docstring) with `discount` (nltk's default 0.1) at every order > 1.
    `discount` without `nltk` fixes D at every order instead of estimating it."""

    counts: NgramCounts
    modified: bool = True
    discount: float | None = None
    nltk: bool = False

    def __post_init__(self):
        if self.nltk and (self.modified or self.order < 2):
            raise ValueError("KneserNey(nltk=True) is nltk's one-discount model, of order >= 2")
        if self.discount is not None and not 0 <= self.discount <= 1:
            raise ValueError(f"Kneser-Ney discount must lie in [0, 1], got {self.discount}")
        if self.nltk and self.discount is None:
            self.discount = 0.1
        self.alpha, self.gamma, self.totals, self.discounts = [], [], [], []
        for k, t in enumerate(self.counts.tables, start=1):
            a = self.adjusted_counts(k)
            total = _per_context(t, a)
            d = self._discount_table(a, k)
            d_entry = np.where(a > 0, np.minimum(d[np.minimum(a, 3)], a), 0.0)
            safe = np.maximum(total, 1e-300)
            self.alpha.append(np.maximum(a - d_entry, 0.0) / safe[t.context])
            types = np.ones(len(t)) * d[1] if self.nltk else d_entry  # nltk: raw types
            self.gamma.append(_per_context(t, types) / safe)
            self.totals.append(total)
            self.discounts.append(d)

    def adjusted_counts(self, k: int) -> np.ndarray:
        """[G_k] raw counts at the top order (and, C&G mode, for n-grams starting with BOS),
        continuation counts N1+(. g) below."""
        t = self.counts.tables[k - 1]
        if k == self.order:
            return t.count
        cont = self.counts.continuation(k)
        return cont if self.nltk else np.where(t.bos_initial, t.count, cont)

    def _discount_table(self, a: np.ndarray, k: int) -> np.ndarray:
        if self.nltk:  # nltk: a fixed D above the unigram level, the unigram undiscounted
            return np.full(4, 0.0 if k == 1 else self.discount) * (np.arange(4) > 0)
        if self.discount is not None:
            return np.full(4, self.discount) * (np.arange(4) > 0)
        return kn_discounts(a, self.modified)

    def token_probs(self, found: Lookup) -> np.ndarray:
        p = np.full(len(found.pos), 1.0 / self.vocab_size)
        for k in range(1, self.order + 1):
            ctx, gram = found.ctx[k - 1], found.gram[k - 1]
            seen_ctx = found.fits(k) & (_at(self.totals[k - 1], ctx) > 0)
            mixed = _at(self.alpha[k - 1], gram) + _at(self.gamma[k - 1], ctx) * p
            p = np.where(seen_ctx, mixed, p)
        return p


def fit_ngram(
    docs: Documents | Sequence[Sequence[int]],
    order: int,
    method: str,
    vocab_size: int,
    bos_id: int | None = None,
    k: float = 1.0,
    discount: float | None = None,
) -> NgramLM:
    """Counts `docs` and builds the `method` model ("addk", "katz", "kn", "mkn")."""
    if method not in METHODS:
        raise ValueError(f"unknown n-gram method {method!r}; choose one of {METHODS}")
    docs = docs if isinstance(docs, Documents) else Documents.from_list(docs)
    counts = count_ngrams(docs, order, vocab_size, bos_id)
    if method == "addk":
        return AddK(counts, k)
    if method == "katz":
        return KatzBackoff(counts)
    return KneserNey(counts, modified=method == "mkn", discount=discount)

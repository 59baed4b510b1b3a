"""Confidence intervals and paired tests for per-item scores ("is B really better than A?").

Everything here takes per-item values (1/0 correctness, per-item F1, log-likelihoods...) and
treats the items as an i.i.d. sample from the population of items the task stands for; the
intervals say how much the mean would move on another sample of the same size.

- `bootstrap_ci`: the percentile bootstrap interval of the mean (Efron & Tibshirani 1993, "An
  Introduction to the Bootstrap", ch. 13): resample the N items with replacement R times, take
  the mean of each resample, report the (1-level)/2 and (1+level)/2 quantiles of those means.
  `method="bca"` gives the bias-corrected and accelerated interval (ch. 14), whose
  acceleration for the mean has a closed form from the jackknife.
- `paired_bootstrap`: the same on the per-item differences d_i = b_i - a_i of two systems
  scored on the same items (Koehn 2004, "Statistical Significance Tests for Machine
  Translation Evaluation"). The two-sided p-value is the shifted-null one (Efron & Tibshirani
  sec. 16.4): under H0 the resampled mean differences are centred on 0 instead of on the
  observed mean d̄, so p = (1 + #{r : |d̄*_r - d̄| >= |d̄|}) / (R + 1). The +1s (Davison &
  Hinkley 1997, eq. 4.11) count the observed sample as one of the resamples, so p is never 0.
- `permutation_test`: the paired sign-flip test (Fisher 1935): under H0 each d_i is as likely
  to be -d_i, so p = P(|sum_i s_i d_i| >= |sum_i d_i|) over random signs s_i = +-1; exact
  (all 2^m sign patterns of the m nonzero d_i) when m <= `EXACT_MAX`, Monte Carlo otherwise.
- `mcnemar`: the exact McNemar test for two binary outcomes on the same items (McNemar 1947;
  the exact form is a sign test on the discordant pairs): with n01 items only B gets right and
  n10 only A gets right, p = min(1, 2 P(X <= min(n01, n10))) for X ~ Binomial(n01 + n10, 1/2).

Speed: a resampled mean depends only on how many times each distinct value was drawn, so when
the values take few distinct values (accuracy: 2; paired accuracy differences: 3) the draws are
multinomial counts over the distinct values, exactly the same distribution as drawing indices
at a cost of O(R k) instead of O(R N). Other values draw indices in chunks of [R_chunk, N].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

EXACT_MAX = 16  # permutation_test enumerates all 2^m sign patterns up to this many nonzero d_i
FEW_VALUES = 256  # at most this many distinct values: resample counts of values, not indices
CHUNK_ELEMENTS = 2**22  # indices drawn per chunk (32 MiB of int64) in the general path


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """A vs B on the same items; `diff` = mean(b) - mean(a), so positive means B scored higher."""

    n: int  # items paired
    mean_a: float
    mean_b: float
    diff: float  # mean over items of b_i - a_i
    ci: tuple[float, float]  # percentile bootstrap interval of diff at `level`
    p_value: float  # two-sided shifted-null bootstrap p-value (module docstring)
    level: float  # coverage of `ci`
    n_resamples: int


@dataclasses.dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: discordant counts and the two-sided p-value."""

    only_a: int  # items A gets right and B wrong (n10)
    only_b: int  # items B gets right and A wrong (n01)
    p_value: float


def _as_values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    """A 1-D float64 array with at least one item and no NaN or inf (else ValueError)."""
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one value per item (1-D), got shape {out.shape}")
    if out.size == 0:
        raise ValueError(f"{name} is empty: no items to bootstrap")
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {out[bad[0]]} ({bad.size} non-finite values)")
    return out


def _check_resampling(n_resamples: int, level: float | None = None) -> None:
    if n_resamples < 1:
        raise ValueError(f"{n_resamples=} must be at least 1")
    if level is not None and not 0 < level < 1:
        raise ValueError(f"{level=} must be in (0, 1)")


def bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[R] means of R resamples (with replacement, size N) of the N values."""
    n = values.size
    distinct, inverse = np.unique(values, return_inverse=True)
    if distinct.size <= FEW_VALUES and distinct.size * 8 <= n:
        freqs = np.bincount(inverse, minlength=distinct.size) / n
        counts_RK = rng.multinomial(n, freqs, size=n_resamples)
        return counts_RK @ distinct / n
    out = np.empty(n_resamples)
    rows = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx_RN = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.take(values, idx_RN).mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-item `values`: "percentile" or "bca"."""
    if method not in ("percentile", "bca"):
        raise ValueError(f"{method=} is not one of 'percentile', 'bca'")
    values = _as_values(values)
    _check_resampling(n_resamples, level)
    means = bootstrap_means(values, n_resamples, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    levels = (alpha, 1 - alpha) if method == "percentile" else _bca_levels(values, means, alpha)
    lo, hi = np.quantile(means, levels)
    return float(lo), float(hi)


def _bca_levels(values: np.ndarray, means: np.ndarray, alpha: float) -> tuple[float, float]:
    """BCa's adjusted quantile levels (Efron & Tibshirani eqs. 14.9-14.15) for the mean.

    z0 = Phi^-1(fraction of resampled means below the observed mean) corrects the bias; the
    acceleration a = sum(u^3) / (6 sum(u^2)^1.5), with u_i = mean - (leave-one-out mean)_i
    = (x_i - mean) / (N - 1) for the mean, corrects for skew.
    """
    normal = NormalDist()
    mean = values.mean()
    below = (np.sum(means < mean) + 0.5 * np.sum(means == mean)) / means.size
    if below <= 0 or below >= 1:  # every resample on one side (e.g. constant values)
        return alpha, 1 - alpha
    z0 = normal.inv_cdf(float(below))
    u = (values - mean) / max(values.size - 1, 1)
    spread = np.sum(u**2)
    accel = float(np.sum(u**3) / (6 * spread**1.5)) if spread > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf(alpha), normal.inv_cdf(1 - alpha)):
        levels.append(normal.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    return levels[0], levels[1]


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_values(a, "a"), _as_values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: a has {a.size}, b has {b.size}")
    return a, b


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of mean(b) - mean(a) over the same items: CI and two-sided p-value.

    The p-value is NaN when every difference is the same nonzero value (e.g. B right on the
    only items that differ, and no others): each resample then repeats the observed mean, the
    resampling distribution is a point and says nothing about the null; read the permutation
    or McNemar test, which are exact there."""
    a, b = _paired(a, b)
    _check_resampling(n_resamples, level)
    diffs = b - a
    observed = float(diffs.mean())
    means = bootstrap_means(diffs, n_resamples, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    # Shifted null: |resampled - observed| as extreme as |observed|. A tiny relative slack makes
    # "as extreme" robust to the rounding of means of identical counts (e.g. all-zero diffs).
    slack = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - slack))
    degenerate = bool(np.ptp(diffs) == 0 and observed != 0)
    return PairedResult(
        n=int(a.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        diff=observed,
        ci=(float(lo), float(hi)),
        p_value=math.nan if degenerate else (1 + extreme) / (1 + n_resamples),
        level=level,
        n_resamples=n_resamples,
    )


def permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided paired sign-flip p-value for mean(b) - mean(a) = 0 (module docstring)."""
    a, b = _paired(a, b)
    _check_resampling(n_resamples)
    diffs = (b - a)[b != a]
    if diffs.size == 0:
        return 1.0
    observed = abs(diffs.sum())
    slack = 1e-9 * max(1.0, observed)
    if diffs.size <= EXACT_MAX:
        signs_PM = 1 - 2 * ((np.arange(2**diffs.size)[:, None] >> np.arange(diffs.size)) & 1)
        return float(np.mean(np.abs(signs_PM @ diffs) >= observed - slack))
    # Random signs, grouped by |d|: the number of + signs among the m_j items of magnitude u_j
    # is Binomial(m_j, 1/2), so a flipped sum is sum_j u_j (2 plus_j - m_j).
    magnitudes, counts = np.unique(np.abs(diffs), return_counts=True)
    rng = np.random.default_rng(seed)
    plus_RK = rng.binomial(counts, 0.5, size=(n_resamples, counts.size))
    sums = (2 * plus_RK - counts) @ magnitudes
    return float((1 + np.sum(np.abs(sums) >= observed - slack)) / (1 + n_resamples))


def mcnemar(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> McNemarResult:
    """Exact McNemar test of two binary (0/1) outcome vectors on the same items."""
    a, b = _paired(a, b)
    for name, values in (("a", a), ("b", b)):
        bad = np.flatnonzero((values != 0) & (values != 1))
        if bad.size:
            raise ValueError(f"McNemar needs 0/1 outcomes: {name}[{bad[0]}] = {values[bad[0]]}")
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    return McNemarResult(only_a, only_b, _sign_test_p(only_a, only_b))


def _sign_test_p(k1: int, k2: int) -> float:
    """min(1, 2 P(X <= min(k1, k2))), X ~ Binomial(k1 + k2, 1/2), in exact integer arithmetic."""
    n = k1 + k2
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0)
    for i in range(min(k1, k2)):
        term = term * (n - i) // (i + 1)  # C(n, i + 1), exact
        tail += term
    return min(1.0, 2 * tail / 2**n)

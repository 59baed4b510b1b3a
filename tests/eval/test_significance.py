"""Bootstrap intervals cover at their stated rate; paired tests hold their size and have power.

Simulation tolerances: a coverage (or false-positive rate) estimated from S independent
simulated datasets has standard deviation sqrt(q (1 - q) / S) around its true value q; the
asserts allow 3 of those (a 0.3% chance of failing by bad luck, and the seeds are fixed, so a
pass is reproducible), plus a stated allowance where a method is known to be inexact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from llm.eval import significance
from llm.eval.significance import (
    bootstrap_ci,
    bootstrap_means,
    mcnemar,
    paired_bootstrap,
    permutation_test,
)


def _binomial_sd(q: float, n: int) -> float:
    return math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_percentile_interval_covers_a_known_mean_at_the_stated_rate(level):
    # 1000 datasets of n=200 Bernoulli(0.3) items. The percentile interval of a mean
    # under-covers by O(1/n) (Efron & Tibshirani ch. 14); at n=200 that is under 1 point, so
    # the lower bound allows 0.01 beyond the 3-sd simulation error.
    rng = np.random.default_rng(1)
    datasets, n, p = 1000, 200, 0.3
    items_SN = (rng.random((datasets, n)) < p).astype(np.float64)
    covered = 0
    for s in range(datasets):
        lo, hi = bootstrap_ci(items_SN[s], level=level, seed=s)
        covered += lo <= p <= hi
    rate, tol = covered / datasets, 3 * _binomial_sd(level, datasets)
    assert level - tol - 0.01 <= rate <= level + tol


def test_general_path_covers_and_matches_the_bootstrap_distribution():
    # Continuous values take the index-resampling path. Its resampled means must have the
    # bootstrap distribution's moments: mean x̄ and variance (plug-in variance) / N.
    rng = np.random.default_rng(2)
    x = rng.normal(size=500)
    means = bootstrap_means(x, 20000, np.random.default_rng(0))
    sd_theory = x.std() / math.sqrt(x.size)
    assert abs(means.mean() - x.mean()) < 4 * sd_theory / math.sqrt(means.size)
    assert abs(means.std() / sd_theory - 1) < 4 / math.sqrt(2 * means.size)
    # Coverage of N(1, 1) data, n = 50, 400 datasets (index path, normal data: no skew).
    covered = sum(lo <= 1 <= hi for lo, hi in (
        bootstrap_ci(rng.normal(1, 1, size=50), seed=s) for s in range(400)
    ))  # fmt: skip
    assert abs(covered / 400 - 0.95) <= 3 * _binomial_sd(0.95, 400) + 0.01


def test_few_values_path_has_the_same_distribution_as_resampling_indices(monkeypatch):
    x = (np.random.default_rng(3).random(400) < 0.25).astype(np.float64)
    fast = bootstrap_means(x, 20000, np.random.default_rng(0))
    monkeypatch.setattr(significance, "FEW_VALUES", 0)  # force index resampling
    slow = bootstrap_means(x, 20000, np.random.default_rng(1))
    assert stats.ks_2samp(fast, slow).pvalue > 0.001
    assert abs(fast.std() - slow.std()) < 0.03 * slow.std()


def test_bca_matches_scipy_and_corrects_skew():
    # Exponential data, n=30: skewed, so BCa moves both ends up from the percentile interval.
    # Monte Carlo sd of a 2.5% bootstrap quantile at R=50000 is ~0.0017 here (binomial sd of
    # the quantile's rank / density of the bootstrap distribution); two independent runs
    # differ by ~0.0024 sd, so 0.008 is ~3.3 sd, far below the 0.02 BCa shift.
    x = np.random.default_rng(3).exponential(size=30)
    ours = bootstrap_ci(x, n_resamples=50000, method="bca")
    ref = stats.bootstrap((x,), np.mean, n_resamples=50000, method="BCa", random_state=1)
    percentile = bootstrap_ci(x, n_resamples=50000)
    assert ours == pytest.approx(tuple(ref.confidence_interval), abs=0.008)
    assert ours[0] - percentile[0] > 0.02 and ours[1] - percentile[1] > 0.02


def test_paired_bootstrap_holds_its_size_under_the_null_and_has_power():
    # Null: A and B are two draws of the same per-item success probability, so their
    # difference has mean 0 yet is correlated through the items (as two similar models are).
    rng = np.random.default_rng(4)
    sims, n = 1000, 200
    difficulty_SN = rng.random((sims, n))
    a_SN = (rng.random((sims, n)) < difficulty_SN).astype(np.float64)
    b_SN = (rng.random((sims, n)) < difficulty_SN).astype(np.float64)
    p_boot = np.array([paired_bootstrap(a_SN[s], b_SN[s], seed=s).p_value for s in range(sims)])
    p_perm = np.array([permutation_test(a_SN[s], b_SN[s], n_resamples=1000, seed=s)
                       for s in range(sims)])  # fmt: skip
    tol = 3 * _binomial_sd(0.05, sims)
    for p in (p_boot, p_perm):  # 0/1 scores make p discrete, so P(p <= q) may fall below q
        assert abs(np.mean(p <= 0.05) - 0.05) <= tol
    # A real difference: B is right 15 points more often on 400 independent items. The mean
    # difference has sd sqrt((0.6 * 0.4 + 0.45 * 0.55) / 400) = 0.035, so 0.15 is 4.3 sd and
    # the power at 0.05 is P(Z > 4.3 - 1.96) = 0.99 (normal approximation); require 0.95.
    b_better = (rng.random((200, 400)) < 0.6).astype(np.float64)
    a_worse = (rng.random((200, 400)) < 0.45).astype(np.float64)
    rejected = [paired_bootstrap(a_worse[s], b_better[s], seed=s).p_value <= 0.05
                for s in range(200)]  # fmt: skip
    assert np.mean(rejected) >= 0.95


def test_p_values_are_uniform_under_the_null_for_continuous_scores():
    # Per-item scores like token F1: an item effect shared by A and B plus independent noise.
    rng = np.random.default_rng(9)
    sims = 400
    item_SN = rng.normal(size=(sims, 100))
    a_SN = item_SN + rng.normal(size=(sims, 100))
    b_SN = item_SN + rng.normal(size=(sims, 100))
    p_boot = np.array([paired_bootstrap(a_SN[s], b_SN[s], seed=s).p_value for s in range(sims)])
    p_perm = np.array([permutation_test(a_SN[s], b_SN[s], n_resamples=1000, seed=s)
                       for s in range(sims)])  # fmt: skip
    for p in (p_boot, p_perm):
        for q in (0.05, 0.2, 0.5):
            assert abs(np.mean(p <= q) - q) <= 3 * _binomial_sd(q, sims)


def test_paired_interval_covers_the_true_difference():
    rng = np.random.default_rng(5)
    covered = 0
    for s in range(400):
        a = (rng.random(300) < 0.5).astype(np.float64)
        b = (rng.random(300) < 0.6).astype(np.float64)
        result = paired_bootstrap(a, b, seed=s)
        covered += result.ci[0] <= 0.1 <= result.ci[1]
        assert result.diff == pytest.approx(b.mean() - a.mean())
    assert abs(covered / 400 - 0.95) <= 3 * _binomial_sd(0.95, 400) + 0.01


def test_paired_bootstrap_p_value_definition():
    # Identical systems: every resampled difference is 0 = the observed, so p = 1.
    a = np.array([1.0, 0, 1, 1, 0])
    assert paired_bootstrap(a, a, n_resamples=99).p_value == 1.0
    # Every d_i is in [0.5, 0.59], so every resampled mean is within 0.09 of the observed
    # 0.545 and none is as far from it as 0 is: p = (1 + 0) / (R + 1).
    result = paired_bootstrap(np.zeros(10), np.full(10, 0.5) + np.arange(10) / 100, n_resamples=99)
    assert result.p_value == pytest.approx(1 / 100)
    # Every difference the same nonzero value: the resampled means are all the observed one,
    # so the bootstrap has no null distribution (NaN), while the exact tests say p = 0.25.
    a, b = np.zeros(3), np.ones(3)
    assert np.isnan(paired_bootstrap(a, b, n_resamples=99).p_value)
    assert permutation_test(a, b) == pytest.approx(0.25)


def test_permutation_test_equals_scipy_exact():
    rng = np.random.default_rng(6)
    for trial in range(5):
        a, b = rng.normal(size=11), rng.normal(0.5, 1, size=11)
        b[trial] = a[trial]  # a zero difference: enumerated by scipy, dropped by us; same p
        ref = stats.permutation_test(
            (a, b), lambda x, y: np.mean(y - x), permutation_type="samples", n_resamples=np.inf
        )
        assert permutation_test(a, b) == pytest.approx(ref.pvalue, rel=1e-12)


def test_permutation_monte_carlo_agrees_with_exact(monkeypatch):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=14), rng.normal(0.4, 1, size=14)
    exact = permutation_test(a, b)
    monkeypatch.setattr(significance, "EXACT_MAX", 0)
    approx = permutation_test(a, b, n_resamples=40000)
    assert abs(approx - exact) <= 3 * _binomial_sd(exact, 40000) + 1 / 40000


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 1), (3, 3), (7, 2), (1, 19),
                                           (40, 61), (2400, 2531)])  # fmt: skip
def test_mcnemar_equals_scipy_binomtest(only_a, only_b):
    both, neither = 13, 5
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, dtype=float)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, dtype=float)
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    ref = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b).pvalue
    assert result.p_value == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match=r"values\[2\] = nan"):
        bootstrap_ci([1.0, 0.0, float("nan")])
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 0.0], level=1.5)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci([1.0, 0.0], method="basic")
    with pytest.raises(ValueError, match=r"0/1 outcomes: b\[1\] = 0.5"):
        mcnemar([1, 0], [1, 0.5])

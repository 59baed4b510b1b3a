"""ECE, MCE and classwise ECE against plain loops; temperature scaling against scipy and truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from llm.eval.calibration import (
    calibration_report,
    classwise_ece,
    confidence_bins,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    nll,
    reliability_diagram,
    softmax,
)


def _reference_gaps(conf, correct, n_bins):
    """(weight, |acc - conf|) per non-empty bin, bin b = (b/B, (b+1)/B] and 0 in bin 0, by loop."""
    out = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(conf))
                   if lo < conf[i] <= hi or (b == 0 and conf[i] == 0)]  # fmt: skip
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            out.append((len(members) / len(conf), abs(acc - mean_conf)))
    return out


def _reference_ece(probs_NC, labels_N, n_bins):
    conf = [max(row) for row in probs_NC.tolist()]
    correct = [float(int(np.argmax(row)) == y) for row, y in zip(probs_NC, labels_N, strict=True)]
    return sum(w * gap for w, gap in _reference_gaps(conf, correct, n_bins))


def _random_probs(rng, n, c, scale=2.0):
    return softmax(rng.normal(size=(n, c)) * scale), rng.integers(0, c, size=n)


@pytest.mark.parametrize("n_bins", [1, 5, 15, 20])
def test_ece_equals_a_plain_loop(n_bins):
    rng = np.random.default_rng(0)
    probs, labels = _random_probs(rng, 500, 4)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        _reference_ece(probs, labels, n_bins), abs=1e-12
    )


def test_mce_and_classwise_ece_equal_plain_loops():
    rng = np.random.default_rng(1)
    probs, labels = _random_probs(rng, 300, 3)
    conf = probs.max(axis=1).tolist()
    correct = (probs.argmax(axis=1) == labels).astype(float).tolist()
    assert maximum_calibration_error(probs, labels, 10) == pytest.approx(
        max(gap for _, gap in _reference_gaps(conf, correct, 10)), abs=1e-12
    )
    per_class = [
        sum(w * gap for w, gap in _reference_gaps(probs[:, c].tolist(),
                                                  (labels == c).astype(float).tolist(), 10))
        for c in range(3)
    ]  # fmt: skip
    assert classwise_ece(probs, labels, 10) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_ece_golden_values_by_hand():
    # Two bins (0, 0.5] and (0.5, 1]. Bin 1: confidences 0.1, 0.4, 0.5 (0.5 is a right edge,
    # so it stays in bin 1), one correct: |1/3 - 1/3| = 0. Bin 2: 0.9, 1.0, both correct:
    # |1 - 0.95| = 0.05, weight 2/5. ECE = 0.02, MCE = 0.05.
    conf = np.array([0.1, 0.4, 0.5, 0.9, 1.0])
    correct = np.array([0, 1, 0, 1, 1])
    assert expected_calibration_error(conf, correct, 2) == pytest.approx(0.02, abs=1e-15)
    assert maximum_calibration_error(conf, correct, 2) == pytest.approx(0.05, abs=1e-15)
    bins = confidence_bins(conf, correct.astype(float), 2)
    assert bins.count.tolist() == [3, 2]
    # [N, C] form: a confident right answer, a confident wrong one, an unsure right one.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45]])
    labels = np.array([0, 1, 0])
    # one bin: accuracy 2/3, confidence (0.9 + 0.8 + 0.55) / 3 = 0.75, ECE = 0.75 - 2/3
    assert expected_calibration_error(probs, labels, 1) == pytest.approx(0.75 - 2 / 3, abs=1e-15)
    # a perfectly calibrated set: 4 items at confidence 0.75, 3 right
    assert expected_calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0])) == 0.0


def test_fitted_temperature_equals_scipy_minimiser():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2000, 6)) * 4
    labels = np.array([rng.choice(6, p=p) for p in softmax(logits / 2.5)])
    ours = fit_temperature(logits, labels)
    ref = optimize.minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(-5, 5), method="bounded", options={"xatol": 1e-10},
    )  # fmt: skip
    assert ours == pytest.approx(math.exp(ref.x), abs=1e-4)
    assert nll(logits, labels, ours) <= ref.fun + 1e-12


@pytest.mark.parametrize("t_true", [0.5, 1.0, 3.0])
def test_temperature_recovers_the_generating_temperature(t_true):
    # Labels drawn from softmax(z / T_true): the maximum-likelihood beta = 1/T has asymptotic
    # sd 1 / sqrt(N * mean_i Var_{p}[z_i]) (the inverse Fisher information of the NLL's
    # second derivative); allow 4 of those, mapped to T by the delta method (sd_T = T^2 sd_beta).
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(20000, 5)) * 2
    p_true = softmax(logits / t_true)
    labels = (rng.random((20000, 1)) > np.cumsum(p_true, axis=1)).sum(axis=1)
    mean_z = np.sum(p_true * logits, axis=1, keepdims=True)
    fisher = logits.shape[0] * np.mean(np.sum(p_true * (logits - mean_z) ** 2, axis=1))
    sd_t = t_true**2 / math.sqrt(fisher)
    assert abs(fit_temperature(logits, labels) - t_true) <= 4 * sd_t
    assert sd_t < 0.05 * t_true  # the test can tell a wrong T from the right one


def test_calibration_report_fixes_an_overconfident_model():
    # Logits twice as sharp as the labels' distribution: an overconfident model, T ~ 2.
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(8000, 4)) * 3
    probs = softmax(logits / 2.0)
    labels = (rng.random((8000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    report = calibration_report(logits[:4000], labels[:4000], logits[4000:], labels[4000:])
    assert report.temperature == pytest.approx(2.0, rel=0.1)
    assert report.ece_after < report.ece_before / 3
    assert report.nll_after < report.nll_before
    assert report.accuracy == pytest.approx(np.mean(logits[4000:].argmax(1) == labels[4000:]))
    assert (report.n_val, report.n_test) == (4000, 4000)


def test_temperature_is_infinite_when_uniform_predictions_fit_best():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    labels = np.array([1, 0, 0])  # mostly wrong: the NLL rises as soon as beta = 1/T leaves 0
    assert fit_temperature(logits, labels) == np.inf
    assert nll(logits, labels, np.inf) == pytest.approx(np.log(2), abs=1e-15)  # uniform
    assert all(nll(logits, labels, t) > np.log(2) for t in (0.1, 1.0, 10.0, 1e3))
    report = calibration_report(logits, labels, logits, labels)
    assert report.temperature == np.inf and report.nll_after == pytest.approx(np.log(2))
    # the ranking is kept: 1 of 3 right at confidence 1/2 (not uniform's tie-break argmax)
    assert report.ece_after == pytest.approx(abs(1 / 3 - 1 / 2), abs=1e-12)


def test_temperature_refuses_logits_without_an_optimum():
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="rank every label first"):
        fit_temperature(logits, np.array([0, 1]))  # always right: T -> 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="not logits"):
        expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        expected_calibration_error(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="correctness 0/1"):
        expected_calibration_error(np.array([0.9, 0.8]), np.array([1, 2]))
    with pytest.raises(ValueError, match="shapes"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, int))


def test_reliability_diagram_writes_a_png(tmp_path):
    from matplotlib import image

    probs, labels = _random_probs(np.random.default_rng(5), 400, 3)
    path = reliability_diagram(probs, labels, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(path).shape == (600, 500, 4)  # figsize (5, 6) inches at 100 dpi
    # every item in one bin (the others empty) still draws
    reliability_diagram(np.full(10, 0.97), np.ones(10), tmp_path / "one_bin.png")
    assert (tmp_path / "one_bin.png").stat().st_size > 0

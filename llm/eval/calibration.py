"""Calibration: does a model's confidence match how often it is right?

Definitions follow Guo et al. 2017, "On Calibration of Modern Neural Networks" (sec. 2):

- Confidence is the top-label probability max_c p(c | x); an item is correct when its argmax
  class is the label. Items go into B equal-width bins by confidence, bin b covering
  (b/B, (b+1)/B] (right-closed, as Guo et al.'s I_m = ((m-1)/M, m/M]); a confidence of exactly
  0 goes into the first bin.
- ECE = sum_b (|bin_b| / N) |acc(bin_b) - conf(bin_b)|, acc and conf the bin's mean correctness
  and mean confidence; MCE = max over non-empty bins of |acc - conf|.
- Classwise ECE (Kull et al. 2019, "Beyond temperature scaling", eq. 4): the mean over classes
  c of the binned gap between p(c | x) and the indicator [y = c], over all items.
- NLL = mean_i -log p(y_i | x_i).
- Temperature scaling: p_T = softmax(z / T) with one T > 0 fitted to minimise the NLL of
  validation logits (Guo et al. sec. 4.2). T leaves the argmax, so accuracy, unchanged. The
  NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta, minus a linear
  term), with derivative mean_i (E_{p_beta}[z_i] - z_{i, y_i}) and second derivative
  mean_i Var_{p_beta}[z_i] >= 0, so `fit_temperature` brackets the root of the derivative and
  runs safeguarded Newton on it (Press et al., "Numerical Recipes", `rtsafe`).

Arrays are NumPy float64; logits are [N, C] (N items, C classes), labels [N] ints.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

N_BINS = 15  # Guo et al.'s choice


@dataclasses.dataclass(frozen=True)
class Bins:
    """Equal-width confidence bins: edges [B+1] and, per bin [B], count, accuracy, confidence."""

    edges: np.ndarray
    count: np.ndarray  # items in the bin
    accuracy: np.ndarray  # mean correctness of the bin's items (0 where empty)
    confidence: np.ndarray  # mean confidence of the bin's items (0 where empty)


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """Temperature fitted on validation logits, and the test split before and after it."""

    temperature: float
    accuracy: float  # on test; temperature scaling does not change it
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_val: int
    n_test: int


def log_softmax(logits_NC: np.ndarray) -> np.ndarray:
    shifted = logits_NC - logits_NC.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits_NC: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits_NC))


def _logits_labels(logits_NC, labels_N) -> tuple[np.ndarray, np.ndarray]:
    logits_NC, labels_N = np.asarray(logits_NC, np.float64), np.asarray(labels_N)
    if logits_NC.ndim != 2 or labels_N.shape != logits_NC.shape[:1] or labels_N.size == 0:
        raise ValueError(f"want logits [N, C] and labels [N], N > 0: got shapes "
                         f"{logits_NC.shape} and {labels_N.shape}")  # fmt: skip
    if not np.all(np.isfinite(logits_NC)):
        raise ValueError("logits contain NaN or inf")
    _check_labels(labels_N, logits_NC.shape[1])
    return logits_NC, labels_N.astype(np.int64)


def _check_labels(labels_N: np.ndarray, n_classes: int) -> None:
    bad = np.flatnonzero((labels_N < 0) | (labels_N >= n_classes) | (labels_N != labels_N // 1))
    if bad.size:
        label = labels_N[bad[0]]
        raise ValueError(f"labels[{bad[0]}] = {label} is not a class in [0, {n_classes})")


def top_label(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """(confidence [N], correct [N] as 0/1) from probs [N, C] + labels, or conf [N] + correct [N].

    A 1-D `probs` is already the top-label confidence and `labels` then says whether that top
    label was right (0/1): the form for tasks whose items have different numbers of choices.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.ndim not in (1, 2) or labels.shape != probs.shape[:1] or labels.size == 0:
        raise ValueError(f"want probs [N, C] or confidences [N], and labels [N], N > 0: got "
                         f"shapes {probs.shape} and {labels.shape}")  # fmt: skip
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (pass softmax(logits), not logits)")
    if probs.ndim == 1:
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            raise ValueError(f"with confidences [N], labels are correctness 0/1: "
                             f"labels[{bad[0]}] = {labels[bad[0]]}")  # fmt: skip
        return probs, labels.astype(np.float64)
    _check_labels(labels, probs.shape[1])
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return probs.max(axis=1), correct


def confidence_bins(conf_N: np.ndarray, correct_N: np.ndarray, n_bins: int = N_BINS) -> Bins:
    """Bin items by confidence into (b/B, (b+1)/B] (0 into the first bin)."""
    if n_bins < 1:
        raise ValueError(f"{n_bins=} must be at least 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf_N, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    safe = np.maximum(count, 1)
    accuracy = np.bincount(which, weights=correct_N, minlength=n_bins) / safe
    confidence = np.bincount(which, weights=conf_N, minlength=n_bins) / safe
    return Bins(edges, count, accuracy, confidence)


def expected_calibration_error(probs, labels, n_bins: int = N_BINS) -> float:
    """ECE (Guo et al. eq. 3) of probs [N, C] + labels [N], or confidences [N] + correct [N]."""
    bins = confidence_bins(*top_label(probs, labels), n_bins)
    return float(np.sum(bins.count * np.abs(bins.accuracy - bins.confidence)) / bins.count.sum())


def maximum_calibration_error(probs, labels, n_bins: int = N_BINS) -> float:
    """MCE (Guo et al. eq. 5): the largest |accuracy - confidence| over non-empty bins."""
    bins = confidence_bins(*top_label(probs, labels), n_bins)
    return float(np.max(np.abs(bins.accuracy - bins.confidence)[bins.count > 0]))


def classwise_ece(probs_NC, labels_N, n_bins: int = N_BINS) -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes of the binned |p(c) - [y = c]| gap."""
    probs_NC, labels_N = np.asarray(probs_NC, np.float64), np.asarray(labels_N)
    top_label(probs_NC, labels_N)  # validates shapes, range and labels
    if probs_NC.ndim != 2:
        raise ValueError(f"classwise ECE needs probs [N, C], got shape {probs_NC.shape}")
    total = 0.0
    for c in range(probs_NC.shape[1]):
        bins = confidence_bins(probs_NC[:, c], (labels_N == c).astype(np.float64), n_bins)
        total += np.sum(bins.count * np.abs(bins.accuracy - bins.confidence)) / bins.count.sum()
    return float(total / probs_NC.shape[1])


def nll(logits_NC, labels_N, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the labels under softmax(logits / temperature)."""
    logits_NC, labels_N = _logits_labels(logits_NC, labels_N)
    logp_NC = log_softmax(logits_NC / temperature)
    return float(-np.mean(logp_NC[np.arange(labels_N.size), labels_N]))


def _nll_slope(logits_NC, labels_N, beta: float) -> tuple[float, float]:
    """d/dbeta and d2/dbeta2 of the mean NLL of softmax(beta z) at `beta`."""
    p_NC = softmax(beta * logits_NC)
    expected_N = np.sum(p_NC * logits_NC, axis=1)
    variance_N = np.sum(p_NC * (logits_NC - expected_N[:, None]) ** 2, axis=1)
    gold_N = logits_NC[np.arange(labels_N.size), labels_N]
    return float(np.mean(expected_N - gold_N)), float(np.mean(variance_N))


def fit_temperature(logits_NC, labels_N, *, tol: float = 1e-12) -> float:
    """The T in (0, inf] minimising nll(logits, labels, T): safeguarded Newton on beta = 1/T.

    inf when the NLL does not fall as beta leaves 0 (convex in beta, so beta = 0 is then the
    minimum): uniform predictions fit the validation labels best, i.e. the ranking of the
    choices carries no information about them there. softmax(z / inf) is uniform."""
    logits_NC, labels_N = _logits_labels(logits_NC, labels_N)
    if _nll_slope(logits_NC, labels_N, 0.0)[0] >= 0:
        return math.inf
    # As beta -> infinity the slope tends to mean_i (max_c z_ic - z_iy) >= 0, which is 0 (no
    # finite minimiser: NLL keeps falling as T -> 0) exactly when every label is an argmax.
    if np.all(logits_NC[np.arange(labels_N.size), labels_N] >= logits_NC.max(axis=1)):
        raise ValueError(
            "the validation logits rank every label first (NLL keeps falling as T -> 0):"
            " fit the temperature on items the model gets wrong too"
        )
    lo, hi = 0.0, 1.0
    while _nll_slope(logits_NC, labels_N, hi)[0] < 0:
        lo, hi = hi, hi * 2
    beta = (lo + hi) / 2
    for _ in range(200):
        slope, curvature = _nll_slope(logits_NC, labels_N, beta)
        lo, hi = (beta, hi) if slope < 0 else (lo, beta)
        step = beta - slope / curvature if curvature > 0 else np.inf
        beta_next = step if lo < step < hi else (lo + hi) / 2
        if abs(beta_next - beta) <= tol * max(1.0, beta) or hi - lo <= tol * max(1.0, beta):
            beta = beta_next
            break
        beta = beta_next
    return float(1.0 / beta)


def calibration_report(
    logits_val, labels_val, logits_test, labels_test, n_bins: int = N_BINS
) -> CalibrationReport:
    """Fit T on the validation split, report test ECE and NLL before and after applying it."""
    logits_test, labels_test = _logits_labels(logits_test, labels_test)
    temperature = fit_temperature(logits_val, labels_val)
    before, after = softmax(logits_test), softmax(logits_test / temperature)
    # Scaling keeps the model's ranking, so correctness is the unscaled argmax's; only the
    # confidence changes (to 1/C at T = inf, where argmax(after) would be a tie-break).
    correct = (before.argmax(axis=1) == labels_test).astype(np.float64)
    return CalibrationReport(
        temperature=temperature,
        accuracy=float(np.mean(correct)),
        ece_before=expected_calibration_error(before, labels_test, n_bins),
        ece_after=expected_calibration_error(after.max(axis=1), correct, n_bins),
        nll_before=nll(logits_test, labels_test),
        nll_after=nll(logits_test, labels_test, temperature),
        n_val=int(np.asarray(labels_val).size),
        n_test=int(labels_test.size),
    )


def reliability_diagram(
    probs, labels, path: str | Path, n_bins: int = N_BINS, *, title: str | None = None
) -> Path:
    """PNG: per-bin accuracy bars against the diagonal, the gap shaded, item counts below.

    Needs matplotlib (the `plot` extra). Drawn on a `Figure` of its own, not through pyplot:
    no display, and a notebook's backend and open figures are left alone.
    """
    from matplotlib.figure import Figure

    conf, correct = top_label(probs, labels)
    bins = confidence_bins(conf, correct, n_bins)
    width, left = np.diff(bins.edges), bins.edges[:-1]
    used = bins.count > 0
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(left[used], bins.accuracy[used], width[used], align="edge", color="tab:blue",
            edgecolor="black", label="accuracy")  # fmt: skip
    gap_low = np.minimum(bins.accuracy, bins.confidence)[used]
    gap = np.abs(bins.accuracy - bins.confidence)[used]
    top.bar(left[used], gap, width[used], bottom=gap_low, align="edge", color="tab:red",
            alpha=0.35, hatch="//", edgecolor="tab:red", label="gap to confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ece = float(np.sum(bins.count * np.abs(bins.accuracy - bins.confidence)) / bins.count.sum())
    top.set(ylabel="accuracy", ylim=(0, 1), title=title or f"ECE {ece:.4f} ({conf.size} items)")
    top.legend(loc="upper left")
    bottom.bar(left, bins.count, width, align="edge", color="gray", edgecolor="black")
    for x, w, n in zip(left[used], width[used], bins.count[used], strict=True):
        bottom.text(x + w / 2, n, str(n), ha="center", va="bottom", fontsize=7)
    bottom.set(xlabel="confidence (top-label probability)", ylabel="items", xlim=(0, 1))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path

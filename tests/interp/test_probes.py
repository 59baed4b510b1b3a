"""Linear probes: parity with scikit-learn's LogisticRegression (C = 1 / (l2 N), or
2 / (l2 N) for two classes: llm/interp/probes.py derives both), and layer_probes finding
the layer where a label was planted."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from llm.interp.probes import fit_probe, layer_probes


def _data(n=200, d=10, classes=3, seed=0):
    """Features on very different scales and offsets, labels from a noisy linear rule."""
    rng = np.random.default_rng(seed)
    x_ND = rng.normal(size=(n, d)) * rng.uniform(0.5, 5.0, d) + 3.0
    score_NC = x_ND[:, :3] @ rng.normal(size=(3, classes)) + rng.normal(size=(n, classes))
    return x_ND, score_NC.argmax(axis=1)


def _sklearn(x_ND, y_N, C):
    z_ND = StandardScaler().fit_transform(x_ND)  # the same standardisation (ddof = 0)
    return z_ND, LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(z_ND, y_N)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_multinomial_probe_equals_sklearn(l2):
    x_ND, y_N = _data()
    probe = fit_probe(x_ND, y_N, l2=l2)
    z_ND, ref = _sklearn(x_ND, y_N, C=1 / (l2 * len(y_N)))
    np.testing.assert_array_equal(probe.predict(x_ND), ref.predict(z_ND))
    np.testing.assert_allclose(probe.coef_DC.T, ref.coef_, atol=1e-6 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(probe.intercept_C, ref.intercept_ - ref.intercept_.mean(), atol=1e-6)
    np.testing.assert_allclose(probe.predict_proba(x_ND), ref.predict_proba(z_ND), atol=1e-7)
    assert probe.accuracy(x_ND, y_N) == pytest.approx(ref.score(z_ND, y_N))


def test_binary_probe_equals_sklearn_with_twice_the_c():
    x_ND, y_N = _data()
    y_N = (y_N == 0).astype(np.int64)
    l2 = 1e-2
    probe = fit_probe(x_ND, y_N, l2=l2)
    z_ND, ref = _sklearn(x_ND, y_N, C=2 / (l2 * len(y_N)))
    w_D = probe.coef_DC[:, 1] - probe.coef_DC[:, 0]  # sklearn's single weight vector
    np.testing.assert_allclose(w_D, ref.coef_[0], atol=1e-6 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(probe.intercept_C[1] - probe.intercept_C[0], ref.intercept_[0],
                               atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(probe.predict(x_ND), ref.predict(z_ND))


def test_probe_generalises_and_ignores_constant_features():
    x_ND, y_N = _data(n=400)
    x_ND = np.concatenate([x_ND, np.full((400, 1), 7.0)], axis=1)  # zero variance
    probe = fit_probe(x_ND[:300], y_N[:300])
    assert np.all(np.isfinite(probe.coef_DC)) and np.allclose(probe.coef_DC[-1], 0)
    assert probe.accuracy(x_ND[300:], y_N[300:]) > 0.8  # the rule is linear: a probe reads it
    assert probe.n_classes == 3


def test_layer_probes_find_the_planted_layer():
    """Noise at every layer; at layer 2 the label is added along a class direction. The
    probe reads it there and is near chance (1/3) elsewhere."""
    rng = np.random.default_rng(0)
    Y, N, D, C = 4, 300, 16, 3
    labels_N = rng.integers(0, C, N)
    hidden_YND = rng.normal(size=(Y, N, D))
    directions_CD = rng.normal(size=(C, D))
    hidden_YND[2] += 1.5 * directions_CD[labels_N]
    accuracies_Y = layer_probes(hidden_YND, labels_N, seed=0)
    assert accuracies_Y.shape == (Y,)
    assert accuracies_Y[2] > 0.9
    others = np.delete(accuracies_Y, 2)
    assert np.all(others < 0.55) and np.all(others < accuracies_Y[2] - 0.35), accuracies_Y


@pytest.mark.parametrize(
    "features, labels, kwargs, match",
    [
        (np.zeros((4, 2)), np.array([0, 1, 0]), {}, "labels must be 4"),
        (np.zeros((4, 2)), np.array([0, 1, 0, 2]), {"n_classes": 2}, "labels must be in"),
        (np.zeros((4, 2)), np.array([0.0, 1, 0, 1]), {}, "integer class ids"),
        (np.zeros((4,)), np.array([0, 1, 0, 1]), {}, r"\[N, D\]"),
        (np.full((4, 2), np.nan), np.array([0, 1, 0, 1]), {}, "NaN"),
        (np.zeros((4, 2)), np.array([0, 0, 0, 0]), {}, "at least 2 classes"),
        (np.zeros((4, 2)), np.array([0, 1, 0, 1]), {"l2": 0.0}, "l2=0.0"),
    ],
)
def test_bad_probe_inputs_are_named(features, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_probe(features, labels, **kwargs)


def test_layer_probes_know_every_class_whatever_the_split():
    """Class 2 occurs once: whichever side of the split it lands on, every probe has 3
    classes, so scoring the test set never meets an unknown label."""
    rng = np.random.default_rng(1)
    labels_N = np.array([0, 1] * 10 + [2])
    hidden_YND = rng.normal(size=(2, 21, 4))
    for seed in range(4):
        accuracies_Y = layer_probes(hidden_YND, labels_N, seed=seed)
        assert accuracies_Y.shape == (2,) and np.all((0 <= accuracies_Y) & (accuracies_Y <= 1))


def test_bad_layer_probe_inputs_are_named():
    with pytest.raises(ValueError, match="train_fraction"):
        layer_probes(np.zeros((2, 10, 3)), np.arange(10) % 2, train_fraction=1.0)
    with pytest.raises(ValueError, match=r"\[Y layers, N examples, D\]"):
        layer_probes(np.zeros((10, 3)), np.arange(10) % 2)
    probe = fit_probe(np.eye(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="D=3; the probe was fit on D=4"):
        probe.predict(np.zeros((2, 3)))


def test_a_probe_stopped_before_convergence_warns():
    rng = np.random.default_rng(0)
    x_ND = rng.normal(size=(200, 16))
    y_N = (x_ND @ rng.normal(size=16) > 0).astype(int)
    with pytest.warns(UserWarning, match="before converging"):
        fit_probe(x_ND, y_N, max_iter=2)

"""Linear probes: is a property linearly readable from a layer's hidden states?

A probe is multinomial logistic regression on standardised features (Alain & Bengio, 2016,
arXiv:1610.01644), fit per layer: the layer whose held-out accuracy is highest is where the
property is most linearly available. A probe that reads it says the information is there,
not that the model uses it (Belinkov, 2022, arXiv:2102.12452).

Design choices:
- Objective: mean cross-entropy + (l2 / 2) ||W||^2 over the N training points, intercepts
  unpenalised. scikit-learn's `LogisticRegression` minimises C * sum CE + ||W||^2 / 2, the
  same objective when C = 1 / (l2 * N) for three or more classes. With two classes it fits
  one weight vector w = W_1 - W_0 where we fit two, W_1 = -W_0 = w / 2, so its C is
  2 / (l2 * N) (tests/interp/test_probes.py checks both).
- Solver: SciPy's L-BFGS-B on the exact NumPy gradient, in float64: the problem is tiny
  (N x D features, D x C weights), float64 makes the optimum reproducible to the tolerance,
  and it is the solver scikit-learn itself uses, so the two agree to the stopping rule.
- Features are standardised (zero mean, unit variance per dimension, from the training set)
  so one l2 suits every layer, whatever the scale of its residual stream.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.optimize
import scipy.special


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: logits = ((features - mean_D) / scale_D) @ coef_DC + intercept_C.

    The intercepts are centred (they sum to zero; softmax ignores a common shift), and so
    are the coefficients at the optimum (the penalty's gradient balances the loss's).
    """

    mean_D: np.ndarray
    scale_D: np.ndarray
    coef_DC: np.ndarray
    intercept_C: np.ndarray

    @property
    def n_classes(self) -> int:
        return self.coef_DC.shape[1]

    def logits(self, features_ND) -> np.ndarray:
        x_ND = _features(features_ND, self.mean_D.shape[0])
        return ((x_ND - self.mean_D) / self.scale_D) @ self.coef_DC + self.intercept_C

    def predict_proba(self, features_ND) -> np.ndarray:
        return scipy.special.softmax(self.logits(features_ND), axis=1)

    def predict(self, features_ND) -> np.ndarray:
        return np.argmax(self.logits(features_ND), axis=1)

    def accuracy(self, features_ND, labels_N) -> float:
        labels_N = _labels(labels_N, len(features_ND), self.n_classes)
        return float(np.mean(self.predict(features_ND) == labels_N))


def fit_probe(
    features_ND, labels_N, *, n_classes: int | None = None, l2: float = 1e-3, max_iter: int = 1000
) -> LinearProbe:
    """Multinomial logistic regression (mean CE + l2/2 ||W||^2) fit by L-BFGS.

    n_classes: default max(label) + 1 (at least 2). max_iter: L-BFGS iterations at most.
    """
    x_ND = _features(features_ND)
    y_N = _labels(labels_N, len(x_ND), n_classes)
    n_classes = int(y_N.max()) + 1 if n_classes is None else n_classes
    if n_classes < 2:
        raise ValueError(f"a probe needs at least 2 classes; got n_classes={n_classes}")
    if not l2 > 0:
        raise ValueError(f"l2={l2} must be positive (unpenalised fits diverge on separable data)")
    mean_D = x_ND.mean(axis=0)
    scale_D = x_ND.std(axis=0)
    scale_D[scale_D == 0] = 1.0  # a constant feature stays zero after centring
    z_ND = (x_ND - mean_D) / scale_D
    D, C = z_ND.shape[1], n_classes
    onehot_NC = np.eye(C)[y_N]

    def objective(theta):
        W_DC, b_C = theta[: D * C].reshape(D, C), theta[D * C :]
        logits_NC = z_ND @ W_DC + b_C
        logp_NC = scipy.special.log_softmax(logits_NC, axis=1)
        loss = -np.mean(np.sum(onehot_NC * logp_NC, axis=1)) + 0.5 * l2 * np.sum(W_DC**2)
        err_NC = (np.exp(logp_NC) - onehot_NC) / len(z_ND)
        grad_W = z_ND.T @ err_NC + l2 * W_DC
        return loss, np.concatenate([grad_W.ravel(), err_NC.sum(axis=0)])

    result = scipy.optimize.minimize(
        objective, np.zeros(D * C + C), jac=True, method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-14},
    )  # fmt: skip
    if result.status == 1:  # 2 (a line-search stop at this tolerance) is benign
        warnings.warn(f"fit_probe: L-BFGS stopped at max_iter={max_iter} before converging; "
                      "raise max_iter", stacklevel=2)  # fmt: skip
    W_DC, b_C = result.x[: D * C].reshape(D, C), result.x[D * C :]
    return LinearProbe(mean_D, scale_D, W_DC, b_C - b_C.mean())


def layer_probes(
    hidden_YND, labels_N, *, train_fraction: float = 0.7, seed: int = 0, l2: float = 1e-3,
    n_classes: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Held-out accuracy [Y] of a probe fit on each layer's features.

    hidden_YND: one feature row per example at every layer (e.g. `out.hidden_states` at one
    token position, or mean-pooled). The same random split (`seed`) serves every layer.
    """
    hidden_YND = np.asarray(hidden_YND, np.float64)
    if hidden_YND.ndim != 3:
        raise ValueError(f"hidden_YND must be [Y layers, N examples, D]; got {hidden_YND.shape}")
    N = hidden_YND.shape[1]
    labels_N = _labels(labels_N, N, n_classes)
    n_classes = int(labels_N.max()) + 1 if n_classes is None else n_classes  # all splits
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction} must be in (0, 1)")
    n_train = round(train_fraction * N)
    if not 0 < n_train < N:
        raise ValueError(f"{N} examples leave no train or no test set at {train_fraction=}")
    order = np.random.default_rng(seed).permutation(N)
    train, test = order[:n_train], order[n_train:]
    accuracies = []
    for x_ND in hidden_YND:
        probe = fit_probe(x_ND[train], labels_N[train], n_classes=n_classes, l2=l2)
        accuracies.append(probe.accuracy(x_ND[test], labels_N[test]))
    return np.array(accuracies)


def _features(features_ND, width: int | None = None) -> np.ndarray:
    x_ND = np.asarray(features_ND, np.float64)
    if x_ND.ndim != 2 or len(x_ND) == 0:
        raise ValueError(f"features must be a non-empty [N, D] array; got shape {x_ND.shape}")
    if width is not None and x_ND.shape[1] != width:
        raise ValueError(f"features have D={x_ND.shape[1]}; the probe was fit on D={width}")
    if not np.all(np.isfinite(x_ND)):
        raise ValueError("features contain NaN or infinite values")
    return x_ND


def _labels(labels_N, n: int, n_classes: int | None) -> np.ndarray:
    """Integer class ids [n] in [0, n_classes) (any non-negative ids when n_classes is None)."""
    y_N = np.asarray(labels_N)
    if y_N.shape != (n,) or n == 0 or not np.issubdtype(y_N.dtype, np.integer):
        raise ValueError(f"labels must be {n} integer class ids [N]; got {y_N.dtype} {y_N.shape}")
    if y_N.min() < 0 or (n_classes is not None and y_N.max() >= n_classes):
        raise ValueError(f"labels must be in [0, n_classes={n_classes}); got "
                         f"[{y_N.min()}, {y_N.max()}]")  # fmt: skip
    return y_N

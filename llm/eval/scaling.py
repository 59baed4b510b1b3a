"""Chinchilla scaling law L(N, D) = E + A / N^alpha + B / D^beta: fit, prediction, allocation.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556),
approach 3 (sec. 3.3 and appendix D.2):
  * N = parameters (here: non-embedding, see llm/eval/sweep.py), D = training tokens,
    L = final loss at (N, D), one run per D.
  * Fit in log space with the log-sum-exp parameterisation a = log A, b = log B, e = log E:
        log L_pred = LSE(a - alpha log N, b - beta log D, e)
    minimising sum_i Huber_delta(log L_pred_i - log L_obs_i), delta = 1e-3, which is robust to
    outliers and, near the optimum (residuals < delta), plain least squares in log L.
  * L-BFGS from a grid of initialisations (alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5,
    ..., 1}, a, b in {0, 5, ..., 25}); the lowest objective is kept, because the objective
    is not convex and single starts land in flat valleys. Here the objective is evaluated at
    all 4,500 grid points and L-BFGS refines the 32 best (refining all took 6 minutes on our
    CPUs and found the same optimum on the synthetic tests).
  * Compute-optimal allocation under C = 6 N D (their eq. 4): minimising L subject to
    N D = C / 6 gives N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta))
    with G = (alpha A / (beta B))^(1 / (alpha + beta)).

The fit runs in float64 (jax's x64 mode, only inside `fit_law`): the Huber delta of 1e-3 in
log L is close to float32's resolution after a few thousand terms, and the noiseless
recovery test asks for parameters to 1e-4. L-BFGS is optax's (with its zoom line search), so
the library needs no scipy.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
import optax

HUBER_DELTA = 1e-3
N_STARTS = 32  # grid points refined by L-BFGS: those with the lowest objective
MAX_ITER = 300  # L-BFGS iterations per start at most
GRAD_TOL = 1e-13  # ... or until the gradient's norm is below this
PAD_TO = 32  # runs are padded (weight 0) to a multiple of this: one compiled shape
# Hoffmann et al.'s initialisation grid, as (alpha, beta, e, a, b) value lists: 4,500 starts.
INIT_GRID = (
    (0.0, 0.5, 1.0, 1.5, 2.0),
    (0.0, 0.5, 1.0, 1.5, 2.0),
    (-1.0, -0.5, 0.0, 0.5, 1.0),
    (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
)


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, with the fit's final objective."""

    E: float  # irreducible loss (nats per token)
    A: float  # model-size term's coefficient
    B: float  # data term's coefficient
    alpha: float  # model-size exponent
    beta: float  # data exponent
    objective: float = math.nan  # summed Huber loss at the fitted parameters

    def predict(self, n: Any, d: Any) -> np.ndarray:
        """Predicted loss at parameters `n` and tokens `d` (arrays broadcast)."""
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def describe(self) -> str:
        return (f"E={self.E:.4f} A={self.A:.4g} B={self.B:.4g} alpha={self.alpha:.4f} "
                f"beta={self.beta:.4f}")  # fmt: skip

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def law_objective(
    theta_5: Any, log_n_P: Any, log_d_P: Any, log_l_P: Any, weight_P: Any, delta: Any
) -> Any:
    """Weighted sum of Huber losses of log-space residuals (jnp); theta_5 = (alpha, beta, e,
    a, b). Weights are 1 for runs and 0 for the padding that keeps one compiled shape."""
    alpha, beta, e, a, b = theta_5
    terms_3P = jnp.stack([a - alpha * log_n_P, b - beta * log_d_P, jnp.full_like(log_n_P, e)])
    residual_P = jax.scipy.special.logsumexp(terms_3P, axis=0) - log_l_P
    return jnp.sum(weight_P * optax.huber_loss(residual_P, delta=delta))


def init_grid(grid: Sequence[Sequence[float]] = INIT_GRID) -> np.ndarray:
    """Every combination of the grid's values, (starts, 5) in (alpha, beta, e, a, b) order."""
    return np.array(list(itertools.product(*grid)), dtype=np.float64)


def fit_law(
    n: Any,
    d: Any,
    loss: Any,
    *,
    delta: float = HUBER_DELTA,
    grid: Sequence[Sequence[float]] = INIT_GRID,
    starts: int = N_STARTS,
    max_iter: int = MAX_ITER,
) -> ScalingLaw:
    """Fits L(N, D) to runs (n[i], d[i], loss[i]); returns the best law over the starts.

    The `starts` grid points with the lowest objective are refined by L-BFGS (all 4,500
    refined would cost minutes on a CPU for the same optimum in our tests)."""
    n, d, loss = (np.asarray(x, np.float64) for x in (n, d, loss))
    if not (n.shape == d.shape == loss.shape and n.ndim == 1):
        raise ValueError(
            f"n, d, loss must be 1-D of one length, got {n.shape, d.shape, loss.shape}"
        )
    if len(n) < 5:
        raise ValueError(f"{len(n)} runs cannot determine the law's 5 parameters")
    finite = np.all(np.isfinite(n)) and np.all(np.isfinite(d)) and np.all(np.isfinite(loss))
    if not finite or np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0):
        raise ValueError("n, d and loss must be positive and finite")
    padded = -(-len(n) // PAD_TO) * PAD_TO  # one compiled shape for up to PAD_TO runs
    data_4P = np.ones((4, padded))
    data_4P[:3, : len(n)] = np.log([n, d, loss])
    data_4P[3, len(n) :] = 0.0  # padding weighs nothing
    with jax.enable_x64(True):
        theta_S5, value_S = _solve(_best_starts(init_grid(grid), data_4P, delta, starts),
                                   data_4P, delta, max_iter)  # fmt: skip
    value_S = np.where(np.isfinite(value_S), np.asarray(value_S), np.inf)
    if not np.isfinite(value_S).any():
        raise ValueError(f"no start of the fit reached a finite objective ({starts} starts)")
    best = int(np.argmin(value_S))
    alpha, beta, e, a, b = (float(x) for x in theta_S5[best])
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                      objective=float(value_S[best]))  # fmt: skip


def _best_starts(grid_G5: np.ndarray, data_4P: np.ndarray, delta: float, k: int) -> np.ndarray:
    """The k grid points with the lowest objective (non-finite ones last); a smaller grid is
    padded with repeats of its last point, so the solver's compiled shape stays the same."""
    value_G = np.asarray(_objective_many(grid_G5, data_4P, delta))
    order = np.argsort(np.where(np.isfinite(value_G), value_G, np.inf), kind="stable")
    chosen = grid_G5[order[:k]]
    return np.concatenate([chosen, np.repeat(chosen[-1:], k - len(chosen), 0)])


@jax.jit
def _objective_many(theta_S5, data_4P, delta):
    """The objective at many parameter vectors at once."""
    per_start = jax.vmap(law_objective, in_axes=(0, None, None, None, None, None))
    return per_start(theta_S5, *data_4P, delta)


@functools.cache
def _solver(max_iter: int):
    """jit(vmap(L-BFGS to convergence)) over starts; cached, so one compile per process."""
    solver = optax.lbfgs()

    def solve(theta_5, data_4P, delta):
        def objective(theta):
            return law_objective(theta, *data_4P, delta)

        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            theta, state, _, i = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = solver.update(
                grad, state, theta, value=value, grad=grad, value_fn=objective
            )
            return optax.apply_updates(theta, updates), state, optax.tree.norm(grad), i + 1

        def keep_going(carry):
            return (carry[3] < max_iter) & (carry[2] > GRAD_TOL)

        init = (theta_5, solver.init(theta_5), jnp.asarray(jnp.inf, theta_5.dtype), 0)
        theta_5 = jax.lax.while_loop(keep_going, step, init)[0]
        return theta_5, objective(theta_5)

    return jax.jit(jax.vmap(solve, in_axes=(0, None, None)))


def _solve(starts_S5, data_4P, delta, max_iter) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS from every start at once; final (theta, objective) per start."""
    theta_S5, value_S = _solver(max_iter)(starts_S5, data_4P, delta)
    return np.asarray(theta_S5), np.asarray(value_S)


def compute_optimal(law: ScalingLaw, flops: Any) -> tuple[Any, Any]:
    """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = flops (Hoffmann et al. eq. 4)."""
    s = law.alpha + law.beta
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    c6 = np.asarray(flops, np.float64) / 6.0
    return g * c6 ** (law.beta / s), c6 ** (law.alpha / s) / g


def plot_law(fitted: Sequence[Any], held: Sequence[Any], path: str | Path) -> ScalingLaw:
    """Loss vs D per N (points, fitted curves, held-out stars) and the iso-FLOP view, as PNG.

    `fitted` and `held` are `llm.eval.sweep.RunResult`s; the law is fitted on `fitted`.
    Drawn on a `Figure` of its own, not through pyplot (a notebook's backend is left alone)."""
    from matplotlib.figure import Figure

    law = fit_law(*(np.array([getattr(r, k) for r in fitted], float)
                    for k in ("n_params", "tokens", "val_loss")))  # fmt: skip
    fig = Figure(figsize=(12, 4.5))
    ax_d, ax_c = fig.subplots(1, 2)
    _draw_loss_vs_tokens(ax_d, law, fitted, held)
    _draw_iso_flops(ax_c, law, [*fitted, *held])
    fig.suptitle(f"L(N, D) = E + A/N^alpha + B/D^beta: {law.describe()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return law


def _draw_loss_vs_tokens(ax, law: ScalingLaw, fitted, held) -> None:
    import matplotlib
    import matplotlib.ticker

    runs = [*fitted, *held]
    d_grid = np.geomspace(min(r.tokens for r in runs) / 1.5, max(r.tokens for r in runs) * 1.5)
    sizes = sorted({r.n_params for r in runs})
    shades = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(sizes)))
    colors = dict(zip(sizes, shades, strict=True))
    for n in sizes:
        ax.plot(d_grid, law.predict(n, d_grid), color=colors[n], lw=1, label=f"N={n:,}")
        pts = [r for r in fitted if r.n_params == n]
        ax.plot([r.tokens for r in pts], [r.val_loss for r in pts], "o", color=colors[n])
    for r in held:
        predicted = float(law.predict(r.n_params, r.tokens))
        ax.plot(r.tokens, r.val_loss, "*", ms=14, color=colors[r.n_params], mec="k",
                label=f"held out {r.name} (predicted {predicted:.3f})")  # fmt: skip
    ax.axhline(law.E, color="gray", ls=":", lw=1, label=f"E = {law.E:.3f}")
    low = min(r.val_loss for r in runs) - 0.3
    if law.E > low - 1.0:  # an E far below the data would squash the curves: leave it off
        low = min(low, law.E - 0.05)
    ax.set_ylim(low, max(r.val_loss for r in runs) + 0.3)
    ax.set(xscale="log", xlabel="training tokens D", ylabel="validation loss (nats/byte)",
           title="loss vs tokens per model size (lines: fitted law)")  # fmt: skip
    ticks = sorted({r.tokens for r in runs})  # the budgets themselves, as millions of tokens
    ax.set_xticks(ticks, [f"{t / 1e6:.2g}M" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _draw_iso_flops(ax, law: ScalingLaw, runs) -> None:
    """Loss along N at fixed C = 6 N D, for budgets spanning the sweep, optimum marked; each
    curve spans N_opt / 30 .. 30 N_opt, and the y axis the sweep's losses (far from the
    optimum a curve shoots up and would flatten the rest)."""
    flops = np.geomspace(min(6 * r.n_params * r.tokens for r in runs),
                         max(6 * r.n_params * r.tokens for r in runs), 4)  # fmt: skip
    for c in flops:
        n_opt, d_opt = compute_optimal(law, c)
        n_grid = np.geomspace(n_opt / 30, n_opt * 30, 200)
        line = ax.plot(n_grid, law.predict(n_grid, c / (6 * n_grid)), lw=1, label=f"C={c:.2g}")
        ax.plot(n_opt, law.predict(n_opt, d_opt), "x", color=line[0].get_color(), ms=9)
    losses = [r.val_loss for r in runs]
    ax.set_ylim(min(losses) - 0.3, max(losses) + 0.5)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="predicted loss",
           title="iso-FLOP curves of the fitted law (x: compute-optimal N)")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)

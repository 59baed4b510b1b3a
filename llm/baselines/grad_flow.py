"""The vanishing / exploding gradient lesson: how dL/dh_t shrinks or grows as it flows back.

A loss read at the last step T only, L = g . h_T with ||g|| = 1, is backpropagated through T
steps of a recurrent network by llm/baselines/backprop.py; the norm ||dL/dh_t|| for t = T..1 is
how much of the error signal at T still reaches step t.

Design choices
- Tanh RNN, h_t = tanh(u_t + h_{t-1} W + b). By the chain rule
  dL/dh_{t-1} = (dL/dh_t * tanh'(a_t)) W^T, so over k steps the gradient is multiplied by k
  Jacobians diag(tanh') W^T (Bengio, Simard & Frasconi 1994; Hochreiter 1991). With tanh' <= 1,
  the largest singular value of W bounds each factor: below 1 the gradient must vanish
  geometrically; above 1 it may explode (Pascanu, Mikolov & Bengio 2013, section 3).
- W = rho Q with Q a random orthogonal matrix (Saxe, McClelland & Ganguli 2014): its spectral
  radius and every singular value equal rho, so in the linearised regime (tiny inputs, tanh' ~ 1)
  ||dL/dh_t|| = rho^(T - t) exactly, and the lesson's slope is ln rho per step, not blurred by a
  non-normal matrix's transient growth. With inputs of unit size the tanh saturates, tanh' < 1,
  and the curves bend below that line (the bound ||dL/dh_t|| <= rho^(T-t) always holds).
- LSTM (Hochreiter & Schmidhuber 1997): the same loss on h_T; we report the norm of the gradient
  of the whole state, ||(dL/dh_t, dL/dc_t)||. Along the cell path dL/dc_{t-1} = dL/dc_t * f_t,
  so the forget gate, not the spectrum of W, sets the decay: a forget-gate bias of b_f makes
  f ~ sigmoid(b_f) (Gers et al. 2000; Jozefowicz et al. 2015 recommend b_f = 1). The recurrent
  weights still matter through the candidate g: linearised (i = o = 1/2, g ~ 0), the cell
  gradient is multiplied per step by f I + W_g^T / 4, of modulus up to sigmoid(b_f) + rho / 4,
  so at rho = 1 an LSTM with b_f = 3 grows (0.95 + 0.25 > 1) where b_f = 1 barely decays.
- Batch of one sequence, float64, inputs u_t ~ N(0, input_scale^2) drawn from `seed`.

Shapes: L steps (T in the text), H hidden width, G = 4H LSTM gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm.baselines.backprop import lstm_backward, lstm_forward, rnn_backward, rnn_forward

RADII = (0.5, 1.0, 1.5)  # spectral radii of the tanh RNN's recurrent matrix
FORGET_BIASES = (1.0, 3.0)  # LSTM forget-gate biases
YLABEL = "||dL/dh_t||   (LSTM: ||dL/d(h_t, c_t)||)"


@dataclass(frozen=True)
class GradFlowConfig:
    hidden: int = 64  # H, width of the hidden state
    steps: int = 100  # T, number of steps the gradient flows back through
    input_scale: float = 1.0  # standard deviation of each input pre-activation u_t
    seed: int = 0  # draws Q, the inputs u_t and the loss direction g

    def __post_init__(self):
        if self.hidden < 1 or self.steps < 2:
            raise ValueError(f"GradFlowConfig needs hidden >= 1 and steps >= 2, got {self}")
        if not self.input_scale >= 0:
            raise ValueError(f"GradFlowConfig.input_scale={self.input_scale} must be >= 0")


def recurrent_weights(hidden: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """radius * Q, Q orthogonal and uniformly distributed (QR of a Gaussian, signs fixed by the
    diagonal of R as in Mezzadri 2007): every eigenvalue has modulus `radius`."""
    if radius < 0:
        raise ValueError(f"spectral radius={radius} must be >= 0")
    q_HH, r_HH = np.linalg.qr(rng.normal(size=(hidden, hidden)))
    return radius * q_HH * np.sign(np.diag(r_HH))


def _draws(cfg: GradFlowConfig, width: int):
    """Q-generating rng, inputs u [1, T, width] and the unit loss direction g [1, H]."""
    rng = np.random.default_rng(cfg.seed)
    u_1LW = cfg.input_scale * rng.normal(size=(1, cfg.steps, width))
    g_1H = rng.normal(size=(1, cfg.hidden))
    return rng, u_1LW, g_1H / np.linalg.norm(g_1H)


def rnn_problem(radius: float, cfg: GradFlowConfig = GradFlowConfig()):
    """The tanh RNN's inputs u [1, T, H], W_HH = radius * Q and loss direction g [1, H]."""
    rng, u_1LH, g_1H = _draws(cfg, cfg.hidden)
    return u_1LH, recurrent_weights(cfg.hidden, radius, rng), g_1H


def lstm_problem(radius: float, cfg: GradFlowConfig = GradFlowConfig(), forget_bias: float = 1.0):
    """The LSTM's inputs u [1, T, G], W_HG (four blocks radius * Q, one Q each), b_G (zero but
    the forget gate's `forget_bias`) and loss direction g [1, H]."""
    H = cfg.hidden
    rng, u_1LG, g_1H = _draws(cfg, 4 * H)
    W_HG = np.concatenate([recurrent_weights(H, radius, rng) for _ in range(4)], axis=1)
    b_G = np.zeros(4 * H)
    b_G[H : 2 * H] = forget_bias
    return u_1LG, W_HG, b_G, g_1H


def rnn_grad_norms(radius: float, cfg: GradFlowConfig = GradFlowConfig()) -> np.ndarray:
    """||dL/dh_t|| for t = 1..T (index t - 1) of a tanh RNN with W = radius * Q, L = g . h_T."""
    u_1LH, W_HH, g_1H = rnn_problem(radius, cfg)
    _, caches = rnn_forward(u_1LH, np.zeros((1, cfg.hidden)), W_HH, np.zeros(cfg.hidden))
    dh_local_1LH = np.zeros_like(u_1LH)
    dh_local_1LH[:, -1] = g_1H
    _, _, _, dh_1LH, _ = rnn_backward(dh_local_1LH, caches)
    return np.linalg.norm(dh_1LH[0], axis=-1)


def lstm_grad_norms(
    radius: float, cfg: GradFlowConfig = GradFlowConfig(), forget_bias: float = 1.0
) -> np.ndarray:
    """||(dL/dh_t, dL/dc_t)|| for t = 1..T of the LSTM of `lstm_problem`, L = g . h_T: the
    gradient of the whole state (h_t, c_t) handed to step t + 1."""
    u_1LG, W_HG, b_G, g_1H = lstm_problem(radius, cfg, forget_bias)
    zeros_1H = np.zeros((1, cfg.hidden))
    _, caches = lstm_forward(u_1LG, zeros_1H, zeros_1H, W_HG, b_G)
    dh_local_1LH = np.zeros((1, cfg.steps, cfg.hidden))
    dh_local_1LH[:, -1] = g_1H
    _, _, _, dh_1LH, dc_1LH = lstm_backward(dh_local_1LH, caches)
    return np.sqrt((dh_1LH[0] ** 2).sum(-1) + (dc_1LH[0] ** 2).sum(-1))


def grad_flow(
    cfg: GradFlowConfig = GradFlowConfig(),
    radii: tuple[float, ...] = RADII,
    forget_biases: tuple[float, ...] = FORGET_BIASES,
) -> dict[str, np.ndarray]:
    """Norms for t = 1..T per curve, keyed "rnn rho=0.5", ..., then "lstm b_f=1", ... (the LSTM
    at radius 1 only: its forget gate, not the radius, sets the decay)."""
    flows = {f"rnn rho={r:g}": rnn_grad_norms(r, cfg) for r in radii}
    for b_f in forget_biases:
        flows[f"lstm b_f={b_f:g}"] = lstm_grad_norms(1.0, cfg, b_f)
    return flows


def log_slope(norms_T: np.ndarray) -> float:
    """Least-squares slope of ln ||dL/dh_t|| against k = T - t, the steps flowed back: ln rho
    in the linearised regime (negative: vanishing; positive: exploding)."""
    k = np.arange(len(norms_T))[::-1]
    return float(np.polyfit(k, np.log(norms_T), 1)[0])


def norm_table(flows: dict[str, np.ndarray], every: int = 10) -> str:
    """Rows t = T, T - every, ..., 1; one column of ||dL/dh_t|| per curve."""
    steps = len(next(iter(flows.values())))
    ts = sorted({*range(steps, 0, -every), 1}, reverse=True)
    width = max(12, *(len(k) + 1 for k in flows))
    lines = [f"{'t':>5}" + "".join(f"{k:>{width}}" for k in flows)]
    for t in ts:
        lines.append(f"{t:>5}" + "".join(f"{v[t - 1]:>{width}.3e}" for v in flows.values()))
    return "\n".join(lines)


def plot_grad_flow(panels: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """One panel per entry of `panels` (title -> curves), ||dL/dh_t|| against t on a log axis,
    one line per curve, written as a PNG. Needs matplotlib (the `plot` extra). Drawn on a
    `Figure` of its own, not through pyplot: no display, and a notebook's backend and open
    figures are left alone."""
    from matplotlib.figure import Figure

    if not panels or not all(panels.values()):
        raise ValueError("plot_grad_flow needs at least one panel, each with at least one curve")
    path = Path(path)
    fig = Figure(figsize=(6.5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, flows) in zip(axes[0], panels.items(), strict=True):
        for name, norms_T in flows.items():
            ax.semilogy(np.arange(1, len(norms_T) + 1), norms_T, label=name)
        ax.set(xlabel="step t (the loss is read at t = T)", ylabel=YLABEL, title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path

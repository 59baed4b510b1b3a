"""Integrated gradients through the input embeddings (Sundararajan et al., 2017, arXiv:1703.01365).

The attribution of embedding coordinate (l, d) is

    (x - x')_ld * integral_0^1 df/dx_ld (x' + a (x - x')) da,

where x are the token embeddings the model looks up, x' a baseline (all-zero embeddings by
default: "no token here"; a model with learned or sinusoidal positions still adds them
to either), and f the log-probability of a target token at one position. Completeness, the
paper's axiom: exact attributions sum to f(x) - f(x'), so the gap between the sum and the
difference is the quadrature error, reported as `completeness_error_B`.

Design choices:
- Quadrature: Gauss-Legendre on [0, 1] by default (as Captum's `IntegratedGradients`).
  Along the straight path the integrand is smooth (GELU/SiLU, softmax and norms are
  analytic), and an m-node Gauss-Legendre rule is exact for polynomials of degree 2m - 1,
  so its error falls faster than any power of 1/m; the paper's right Riemann sum falls as
  1/m and the trapezoid rule as 1/m^2. Both stay available (`rule=`) for comparison.
- Batching: the interpolation points come in chunks of `batch_steps` (default 16), each a
  `vmap` axis over the forward-and-gradient of all B rows in one jitted function; the last
  chunk is padded with zero-weight nodes, so one compilation serves every `steps` (jax
  compiles dominate on CPU) and memory is bounded by the chunk, not by S.
- Rows are independent: the gradient of the summed log-probabilities is each row's own.
- The zero baseline is degenerate for a model whose input reaches the blocks only through
  pre-norms, with no additive positions (RoPE, ALiBi, NoPE: Llama, SmolLM2) and no norm
  biases: there f(0) is the uniform distribution, and near 0 each norm has gain
  1 / sqrt(eps), so f jumps to the model's prediction within a = 1e-6 or less of the
  baseline, a step no quadrature in float32 resolves (a 2-layer RoPE model misses
  completeness by 17-129% at 16 to 256 steps). Pass a token id as `baseline` (a pad or EOS token,
  as text attribution commonly does): its embedding in every position. A completeness
  error above 1% raises a warning that says so.
- Even then a deep real model's path can be rough: on SmolLM2-135M the integrand has spikes
  narrower than 1/512 of the path and 1024 steps still miss completeness by 36%
  (docs/interpretability.md). Read `completeness_error_B` before the scores.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model import forward, unembed
from llm.ops import quantized
from llm.typing import Array, PyTree

RULES = ("gauss-legendre", "trapezoid", "riemann")


@dataclasses.dataclass(frozen=True)
class Attribution:
    """What `integrated_gradients` returns (NumPy arrays, float32 unless noted).

    scores_BLD: the attribution of every embedding coordinate.
    per_token_BL: `scores_BLD` summed over D: how much each input token moved f.
    delta_B: f(x) - f(baseline), what the scores should sum to.
    completeness_error_B: |sum of scores - delta| / |delta|, the quadrature's relative error.
    target_B: the token ids (int32) whose log-probability f is.
    logprob_B: f(x), the model's log-probability of the target at `position`.
    """

    scores_BLD: np.ndarray
    per_token_BL: np.ndarray
    delta_B: np.ndarray
    completeness_error_B: np.ndarray
    target_B: np.ndarray
    logprob_B: np.ndarray


def integrated_gradients(
    cfg: ModelConfig,
    params: PyTree,
    tokens_BL: Array,
    *,
    position: int = -1,
    target: int | Array | None = None,
    steps: int = 64,
    baseline: Array | int | None = None,
    rule: str = "gauss-legendre",
    batch_steps: int = 16,
) -> Attribution:
    """Integrated-gradient attributions of log p(target | tokens[:position + 1]).

    position: the query position whose next-token distribution is read (negative counts
      from the end). target: a token id, or one per row [B]; None = the model's own top
      next token at `position`. steps: quadrature nodes S. baseline: [B, L, D] or [L, D]
      embeddings, or a token id whose embedding fills every position (default: zeros; see
      the module docstring for models without additive positions). batch_steps:
      interpolation points per compiled batch (batch_steps x B sequences at once; lower it
      when they do not fit in memory).
    """
    tokens_BL = jnp.asarray(tokens_BL)
    x_BLD = _token_embeddings(cfg, params, tokens_BL)
    B, L, D = x_BLD.shape
    position = _check_position(position, L)
    if isinstance(baseline, int | np.integer):
        base_BLD = _token_embeddings(cfg, params, jnp.full((B, L), baseline, jnp.int32))
    else:
        base_BLD = _baseline(baseline, (B, L, D))
    alphas_S, weights_S = quadrature(rule, steps)
    if batch_steps < 1:
        raise ValueError(f"batch_steps={batch_steps} must be at least 1")
    lp_x_BV, lp_base_BV = _endpoints(cfg, params, tokens_BL, x_BLD, base_BLD, position)
    target_B = _target(target, lp_x_BV)
    mean_grad_BLD = jnp.zeros_like(x_BLD)
    for alphas_C, weights_C in _chunks(alphas_S, weights_S, batch_steps):
        mean_grad_BLD += _path_gradient(
            cfg, params, tokens_BL, x_BLD, base_BLD, target_B, alphas_C, weights_C, position
        )
    scores_BLD = np.asarray((x_BLD - base_BLD) * mean_grad_BLD)
    result = _attribution(scores_BLD, np.asarray(lp_x_BV), np.asarray(lp_base_BV), target_B)
    if np.any(result.completeness_error_B > 0.01):
        warnings.warn(
            f"integrated gradients miss completeness by up to "
            f"{result.completeness_error_B.max():.1%} with {steps} {rule} steps: raise `steps`, "
            f"or, for a model without additive positions, use a token id as `baseline`",
            stacklevel=2,
        )
    return result


def _attribution(scores_BLD, lp_x_BV, lp_base_BV, target_B) -> Attribution:
    """The result, with f at both ends of the path and the completeness check."""
    rows = np.arange(len(target_B))
    logprob_B = lp_x_BV[rows, target_B]
    delta_B = logprob_B - lp_base_BV[rows, target_B]
    total_B = scores_BLD.astype(np.float64).sum(axis=(1, 2))
    error_B = np.abs(total_B - delta_B) / np.maximum(np.abs(delta_B), np.finfo(np.float32).tiny)
    return Attribution(
        scores_BLD=scores_BLD,
        per_token_BL=scores_BLD.sum(axis=2),
        delta_B=delta_B,
        completeness_error_B=error_B.astype(np.float32),
        target_B=target_B,
        logprob_B=logprob_B,
    )


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes a_S in [0, 1], weights w_S summing to one) of a rule for integrals over [0, 1]."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    least = 2 if rule == "trapezoid" else 1
    if steps < least:
        raise ValueError(f"steps={steps}: the {rule!r} rule needs at least {least}")
    if rule == "gauss-legendre":
        nodes_S, weights_S = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], sum 2
        return (nodes_S + 1) / 2, weights_S / 2
    if rule == "trapezoid":
        weights_S = np.full(steps, 1.0 / (steps - 1))
        weights_S[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights_S
    return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)  # right Riemann sum


def _chunks(alphas_S: np.ndarray, weights_S: np.ndarray, size: int):
    """(nodes, weights) in float32 chunks of `size`, the last padded with zero weights."""
    pad = -len(alphas_S) % size
    alphas = np.pad(alphas_S, (0, pad)).astype(np.float32).reshape(-1, size)
    weights = np.pad(weights_S, (0, pad)).astype(np.float32).reshape(-1, size)
    return zip(alphas, weights, strict=True)


def _token_embeddings(cfg: ModelConfig, params: PyTree, tokens_BL: Array) -> Array:
    """The embedding rows the model looks up for `tokens_BL`, in float32 [B, L, D]."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"integrated_gradients takes the ModelConfig (cfg.model); got a "
                        f"{type(cfg).__name__}")  # fmt: skip
    if cfg.arch != "transformer":
        raise ValueError(f"integrated_gradients reads a Transformer; got model.arch={cfg.arch!r}")
    if tokens_BL.ndim != 2 or not jnp.issubdtype(tokens_BL.dtype, jnp.integer):
        raise ValueError(f"tokens_BL must be integer ids [B, L]; got {tokens_BL.dtype} "
                         f"{tokens_BL.shape}")  # fmt: skip
    if int(tokens_BL.min()) < 0 or int(tokens_BL.max()) >= cfg.vocab_size:
        raise ValueError(f"token ids (inputs or baseline) outside [0, vocab_size={cfg.vocab_size})")
    table_VD = params["token_embed"]
    if quantized.is_qarray(table_VD):
        return quantized.take(table_VD, tokens_BL).astype(jnp.float32)
    return jnp.take(table_VD, tokens_BL, axis=0).astype(jnp.float32)


def _check_position(position: int, L: int) -> int:
    if not -L <= position < L:
        raise ValueError(f"position={position} is outside a sequence of length {L}")
    return position % L


def _baseline(baseline: Array | None, shape: tuple[int, int, int]) -> Array:
    if baseline is None:
        return jnp.zeros(shape, jnp.float32)
    baseline = jnp.asarray(baseline, jnp.float32)
    if baseline.shape not in (shape, shape[1:]):
        raise ValueError(f"baseline has shape {baseline.shape}; expected [B, L, D] = {shape} "
                         f"or [L, D] = {shape[1:]}")  # fmt: skip
    return jnp.broadcast_to(baseline, shape)


def _target(target: int | Array | None, lp_BV: Array) -> np.ndarray:
    """Target ids [B]: the given ones, or the model's top next token in each row."""
    B, V = lp_BV.shape
    if target is None:
        return np.asarray(jnp.argmax(lp_BV, axis=-1), np.int32)
    target_B = np.broadcast_to(np.asarray(target), (B,)) if np.ndim(target) == 0 else target
    target_B = np.asarray(target_B)
    if target_B.shape != (B,) or not np.issubdtype(target_B.dtype, np.integer):
        raise ValueError(f"target must be a token id or [B={B}] ids; got {target!r}")
    if target_B.min() < 0 or target_B.max() >= V:
        raise ValueError(f"target ids must be in [0, vocab_size={V}); got {target_B.tolist()}")
    return target_B.astype(np.int32)


def _logprobs_at(cfg, params, tokens_BL, e_BLD, position) -> Array:
    """log p(. | prefix) [B, V] at `position`, the token embeddings given as `e_BLD`."""
    out = forward(cfg, params, tokens_BL, input_embeddings_BLD=e_BLD, return_logits=False)
    hidden_B1D = jax.lax.dynamic_slice_in_dim(out.hidden_BLD, position, 1, axis=1)  # normed
    return jax.nn.log_softmax(unembed(cfg, params, hidden_B1D)[:, 0].astype(jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _endpoints(cfg, params, tokens_BL, x_BLD, base_BLD, position) -> tuple[Array, Array]:
    lp_x_BV = _logprobs_at(cfg, params, tokens_BL, x_BLD, position)
    return lp_x_BV, _logprobs_at(cfg, params, tokens_BL, base_BLD, position)


@functools.partial(jax.jit, static_argnums=0)
def _path_gradient(
    cfg, params, tokens_BL, x_BLD, base_BLD, target_B, alphas_C, weights_C, position
) -> Array:
    """sum_c w_c df/dx at x' + a_c (x - x') [B, L, D]: one chunk's share of the integral."""

    def f(e_BLD):
        lp_BV = _logprobs_at(cfg, params, tokens_BL, e_BLD, position)
        return jnp.take_along_axis(lp_BV, target_B[:, None], axis=1).sum()

    def grad_at(alpha):
        return jax.grad(f)(base_BLD + alpha * (x_BLD - base_BLD))

    return jnp.einsum("c,cbld->bld", weights_C, jax.vmap(grad_at)(alphas_C))

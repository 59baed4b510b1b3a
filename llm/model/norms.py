"""LayerNorm and RMSNorm as functions with hand-written gradients, beside plain references.

LayerNorm (Ba et al., 2016, arXiv:1607.06450) and RMSNorm (Zhang & Sennrich, 2019,
arXiv:1910.07467), statistics in float32 whatever the input dtype.

Why a custom VJP: differentiating the plain formula leaves XLA a graph in which the
mean and variance paths are separate chains of element-wise ops and reductions, and on CPU
they fuse badly with the matmuls around them (a stack of norm + matmul pairs ran about 25%
faster with this backward, docs/LOG.md). The backward is the textbook closed form: with
x̂ = (x - μ)·r, r = 1/√(σ² + ε) and g = dy·γ,

    dx = r · (g - mean(g) - x̂ · mean(g·x̂))      (RMSNorm: dx = r · (g - x̂ · mean(g·x̂)))
    dγ = Σ dy·x̂      dβ = Σ dy

It saves only the input and the per-row statistics; x̂ is recomputed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm.typing import Array


def layer_norm_reference(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm_reference(x: Array, scale: Array, eps: float) -> Array:
    x32 = x.astype(jnp.float32)
    rms = jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return (x32 * rms * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    """LayerNorm over the last axis; equals `layer_norm_reference`, gradients included."""
    if bias is None:
        return _norm(x, scale, jnp.zeros_like(scale), eps, True, False)
    return _norm(x, scale, bias, eps, True, True)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """RMSNorm over the last axis; equals `rms_norm_reference`, gradients included."""
    return _norm(x, scale, jnp.zeros_like(scale), eps, False, False)


def _stats(x32: Array, eps: float, center: bool) -> tuple[Array, Array]:
    """Per-row mean (0 for RMSNorm) and reciprocal standard deviation."""
    mean = x32.mean(-1, keepdims=True) if center else jnp.zeros((*x32.shape[:-1], 1), x32.dtype)
    return mean, jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _norm(x, scale, bias, eps, center, use_bias):
    return _norm_fwd(x, scale, bias, eps, center, use_bias)[0]


def _norm_fwd(x, scale, bias, eps, center, use_bias):
    x32 = x.astype(jnp.float32)
    mean, rstd = _stats(x32, eps, center)
    y = (x32 - mean) * rstd * scale.astype(jnp.float32)
    if use_bias:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, mean, rstd, scale, bias)


def _norm_bwd(eps, center, use_bias, residuals, dy):
    x, mean, rstd, scale, bias = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy32 = dy.astype(jnp.float32)
    g = dy32 * scale.astype(jnp.float32)
    dx = g - xhat * jnp.mean(g * xhat, -1, keepdims=True)
    if center:
        dx = dx - jnp.mean(g, -1, keepdims=True)
    rows = tuple(range(dy.ndim - 1))
    dscale = jnp.sum(dy32 * xhat, rows).astype(scale.dtype)
    dbias = jnp.sum(dy32, rows).astype(bias.dtype) if use_bias else jnp.zeros_like(bias)
    return (dx * rstd).astype(x.dtype), dscale, dbias


_norm.defvjp(_norm_fwd, _norm_bwd)

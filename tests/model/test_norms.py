"""Hand-written norm gradients (`llm/model/norms.py`) against autodiff of the plain formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import norms


def _inputs(dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(0), 4)
    x = (3.0 * jax.random.normal(ks[0], (2, 5, 16)) + 1.5).astype(dtype)
    scale = 1.0 + 0.1 * jax.random.normal(ks[1], (16,))
    bias = 0.1 * jax.random.normal(ks[2], (16,))
    dy = jax.random.normal(ks[3], (2, 5, 16)).astype(dtype)
    return x, scale, bias, dy


def _vjp(fn, args, dy):
    out, vjp = jax.vjp(fn, *args)
    return [np.asarray(t, np.float32) for t in (out, *vjp(dy))]


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_equals_reference_with_gradients(with_bias):
    x, scale, bias, dy = _inputs()
    args = (x, scale, bias) if with_bias else (x, scale)

    def ours(x, scale, *b):
        return norms.layer_norm(x, scale, b[0] if b else None, 1e-5)

    def reference(x, scale, *b):
        return norms.layer_norm_reference(x, scale, b[0] if b else None, 1e-5)

    for got, want in zip(_vjp(ours, args, dy), _vjp(reference, args, dy), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norm_equals_reference_with_gradients():
    x, scale, _, dy = _inputs()
    got = _vjp(lambda x, s: norms.rms_norm(x, s, 1e-6), (x, scale), dy)
    want = _vjp(lambda x, s: norms.rms_norm_reference(x, s, 1e-6), (x, scale), dy)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype_and_float32_statistics():
    x, scale, bias, dy = _inputs(jnp.bfloat16)
    out, vjp = jax.vjp(lambda x: norms.layer_norm(x, scale, bias, 1e-5), x)
    (dx,) = vjp(dy)
    assert out.dtype == dx.dtype == jnp.bfloat16
    want = norms.layer_norm_reference(x, scale, bias, 1e-5)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))

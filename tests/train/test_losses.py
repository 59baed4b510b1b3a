"""Cross-entropy plug-ins: plain matches optax, chunked matches plain in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.train.losses import cross_entropy_chunked, cross_entropy_plain

B, L, D, V = 3, 10, 8, 37


@pytest.fixture(scope="module")
def data():
    k = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(k[0], (B, L, D))
    w = jax.random.normal(k[1], (D, V)) * 2.0
    y = jax.random.randint(k[2], (B, L), 0, V)
    mask = (jax.random.uniform(k[3], (B, L)) > 0.3).astype(jnp.float32)
    return h, w, y, mask


@pytest.mark.parametrize("z, eps", [(0.0, 0.0), (1e-2, 0.1)])
def test_plain_matches_optax(data, z, eps):
    h, w, y, mask = data
    logits = h @ w
    loss, ce = cross_entropy_plain(logits, y, mask, z_coef=z, smoothing=eps)
    labels = optax.smooth_labels(jax.nn.one_hot(y, V), eps)
    ref_t = optax.softmax_cross_entropy(logits, labels) + z * jax.nn.logsumexp(logits, -1) ** 2
    ref_ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    np.testing.assert_allclose(loss, jnp.sum(ref_t * mask), rtol=1e-5)
    np.testing.assert_allclose(ce, jnp.sum(ref_ce * mask), rtol=1e-5)


# chunk sizes: divides T=30 unevenly, equals T, exceeds T (padding only)
@pytest.mark.parametrize("chunk, z, eps", [(7, 0.0, 0.0), (30, 1e-2, 0.1), (64, 1e-2, 0.1)])
def test_chunked_equals_plain(data, chunk, z, eps):
    h, w, y, mask = data

    def plain(h, w):
        return cross_entropy_plain(h @ w, y, mask, z_coef=z, smoothing=eps)[0]

    def chunked(h, w):
        project = lambda x: x @ w  # noqa: E731
        return cross_entropy_chunked(
            project, h, y, mask, chunk_size=chunk, z_coef=z, smoothing=eps
        )[0]

    (v1, g1), (v2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(h, w) for f in (plain, chunked))
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    for a, b in zip(g2, g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

"""Position encodings: the properties that define them."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import load_config
from llm.model import positions
from llm.ops.masks import alibi_slopes
from tests.model.conftest import make_cfg


def test_rope_scores_depend_only_on_relative_position():
    cfg = make_cfg(pos_encoding="rope", d_model=64, n_heads=2)
    inv_freq = positions.rope_inv_freq(cfg)
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, cfg.head_size))

    def score(m, n):
        qm = positions.apply_rope(q, jnp.array([[m]]), inv_freq)
        kn = positions.apply_rope(k, jnp.array([[n]]), inv_freq)
        return float((qm * kn).sum())

    assert math.isclose(score(3, 1), score(10, 8), rel_tol=1e-5)
    assert math.isclose(score(0, 0), float((q * k).sum()), rel_tol=1e-6)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)


def test_rope_preserves_norm():
    cfg = make_cfg(pos_encoding="rope")
    x = jax.random.normal(jax.random.key(1), (1, 5, 2, cfg.head_size))
    rotated = positions.apply_rope(x, jnp.arange(5)[None] * 7, positions.rope_inv_freq(cfg))
    np.testing.assert_allclose(
        jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_llama3_scaling_bands():
    """Llama-3.1: short wavelengths kept, long ones divided by the factor, blended between."""
    cfg = load_config("configs/llama3_1_8b.yaml").model
    base = positions.rope_inv_freq(dataclasses.replace(cfg, rope_scaling="none"))
    scaled = positions.rope_inv_freq(cfg)
    wavelen = 2 * np.pi / base
    high = wavelen < cfg.rope_original_max_len / cfg.rope_high_freq_factor
    low = wavelen > cfg.rope_original_max_len / cfg.rope_low_freq_factor
    mid = ~high & ~low
    assert high.sum() > 0 and low.sum() > 0 and mid.sum() > 0
    np.testing.assert_array_equal(scaled[high], base[high])
    np.testing.assert_allclose(scaled[low], base[low] / 8.0)
    assert np.all(scaled[mid] < base[mid]) and np.all(scaled[mid] > base[mid] / 8.0)
    # Golden: the first and last inverse frequencies for Llama-3.1-8B (theta 5e5, H=128),
    # computed by hand from the published formula: 1.0 and 5e5**(-126/128) / 8.
    assert scaled[0] == 1.0
    np.testing.assert_allclose(scaled[-1], 500000.0 ** (-126 / 128) / 8.0, rtol=1e-12)


def test_sinusoidal_table():
    table = positions.sinusoidal(jnp.arange(50)[None], 16)[0]
    half = 8
    np.testing.assert_allclose(table[:, :half] ** 2 + table[:, half:] ** 2, 1.0, rtol=1e-5)
    np.testing.assert_allclose(table[:, 0], np.sin(np.arange(50)), atol=1e-5)  # freq 1
    np.testing.assert_allclose(table[0, half:], 1.0)  # cos(0)


def test_alibi_slopes_match_paper():
    # Press et al. (2022): for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    # Non-power-of-two (12): the 8-head slopes then every other slope of the 16-head set.
    sixteen = [2.0 ** (-0.5 * i) for i in range(1, 17)]
    np.testing.assert_allclose(alibi_slopes(12), [2.0**-i for i in range(1, 9)] + sixteen[0::2][:4])

"""SparseGPT: the blocked `lax.fori_loop` version equals the row-by-row numpy reference, and
its layer reconstruction error beats magnitude and Wanda pruning at the same sparsity."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from llm.compress.prune import PruneSpec, prune_matrix
from llm.compress.sparsegpt import hessian, sparsegpt, sparsegpt_reference


def layer_inputs(k_in: int = 96, n_tokens: int = 400, seed: int = 0) -> np.ndarray:
    """Correlated inputs with uneven feature scales (as LLM activations have), so the Hessian
    is far from diagonal and the OBS update has something to do."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_tokens, k_in)) * rng.uniform(0.2, 3.0, size=k_in)
    x[:, : k_in // 2] += 0.5 * x[:, k_in // 2 :]
    return x.astype(np.float32)


def weights(k_in: int = 96, n_out: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k_in, n_out)).astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, w_pruned) -> float:
    return float(np.sum((x @ w - x @ np.asarray(w_pruned)) ** 2))


@pytest.mark.parametrize(
    "kw",
    [
        dict(sparsity=0.5, block=32),
        dict(sparsity=0.7, block=40),  # K = 96 is not a multiple of the block: a short last one
        dict(nm=(2, 4), block=32),
        dict(nm=(1, 4), block=96),
    ],
)
def test_equals_the_numpy_reference(kw):
    x, w = layer_inputs(), weights()
    h = np.asarray(hessian(jnp.asarray(x)))
    q, keep = sparsegpt(w, h, **kw)
    q_ref, keep_ref = sparsegpt_reference(w, h, **kw)
    np.testing.assert_array_equal(np.asarray(keep), keep_ref)
    np.testing.assert_allclose(np.asarray(q), q_ref, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(q)[~keep_ref] == 0.0)  # exact zeros where pruned


def test_unstructured_prunes_the_asked_fraction_of_every_block():
    x, w = layer_inputs(), weights()
    _, keep = sparsegpt(w, hessian(jnp.asarray(x)), sparsity=0.5, block=40)
    pruned = ~np.asarray(keep)
    for start in range(0, 96, 40):  # the mask is chosen per block of 40 rows (inputs)
        rows = pruned[start : start + 40]
        assert rows.sum() == round(0.5 * rows.size)


def test_nm_keeps_exactly_n_of_every_m_inputs_per_output():
    x, w = layer_inputs(), weights()
    q, keep = sparsegpt(w, hessian(jnp.asarray(x)), nm=(2, 4), block=32)
    groups = np.asarray(q).reshape(24, 4, 24)  # [K/M, M, N]
    np.testing.assert_array_equal((groups != 0).sum(axis=1), 2)
    np.testing.assert_array_equal(np.asarray(keep).reshape(24, 4, 24).sum(axis=1), 2)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_reconstruction_error_below_magnitude_and_wanda(nm):
    x, w = layer_inputs(), weights()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        spec = PruneSpec(method=method, sparsity=0.5, nm=nm, block=32)
        pruned, _ = prune_matrix(jnp.asarray(w), jnp.asarray(x), spec)
        errors[method] = output_error(x, w, pruned)
    assert errors["sparsegpt"] < 0.8 * errors["magnitude"]
    assert errors["sparsegpt"] < errors["wanda"]


def test_dead_inputs_are_zeroed_and_the_rest_still_pruned():
    x, w = layer_inputs(), weights()
    x[:, 5] = 0.0  # feature 5 never fires: H_55 = 0
    q, _ = sparsegpt(w, hessian(jnp.asarray(x)), sparsity=0.5, block=32)
    q_ref, _ = sparsegpt_reference(w, np.asarray(hessian(jnp.asarray(x))), sparsity=0.5, block=32)
    assert np.all(np.asarray(q)[5] == 0.0)
    np.testing.assert_allclose(np.asarray(q), q_ref, rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_named():
    w, h = weights(), np.eye(96, dtype=np.float32)
    with pytest.raises(ValueError, match="Hessian"):
        sparsegpt(w, np.eye(10, dtype=np.float32))
    with pytest.raises(ValueError, match="N:M"):
        sparsegpt(w, h, nm=(2, 5), block=32)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt(w, h, sparsity=1.0)

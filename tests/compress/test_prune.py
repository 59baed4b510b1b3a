"""Magnitude, Wanda and N:M masks on one matrix, and the layer-sequential `prune_model`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm import init_params, load_config
from llm.compress import calibration
from llm.compress.prune import (
    PruneSpec,
    nm_mask,
    prune_layer,
    prune_matrix,
    prune_model,
    sparsity_of,
    unstructured_mask,
    wanda_scores,
)
from llm.ops.quantized import quantize


def matrix(k_in: int = 32, n_out: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k_in, n_out)).astype(np.float32)


def outlier_inputs(k_in: int = 32, n_tokens: int = 200, seed: int = 1) -> np.ndarray:
    """A few input features 20x larger than the rest: the LLM outlier features Wanda targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_tokens, k_in))
    x[:, :3] *= 20.0
    return x.astype(np.float32)


def test_layerwise_magnitude_prunes_the_smallest_of_the_matrix():
    w = matrix()
    pruned, keep = prune_matrix(jnp.asarray(w), None, PruneSpec(sparsity=0.25))
    keep = np.asarray(keep)
    assert (~keep).sum() == round(0.25 * w.size)
    assert np.abs(w[keep]).min() > np.abs(w[~keep]).max()  # one threshold for the matrix
    np.testing.assert_array_equal(np.asarray(pruned), np.where(keep, w, 0.0))


def test_wanda_compares_each_output_over_its_inputs():
    """Wanda eq. 1 by hand (|W| times the feature's l2 norm); per column, the pruned scores
    lie below the kept ones, and exactly round(0.5 * K) go from every output."""
    w, x = matrix(), outlier_inputs()
    scores = np.abs(w) * np.sqrt((x.astype(np.float64) ** 2).sum(axis=0))[:, None]
    np.testing.assert_allclose(np.asarray(wanda_scores(jnp.asarray(w), jnp.asarray(x))), scores,
                               rtol=1e-5)  # fmt: skip
    _, keep = prune_matrix(jnp.asarray(w), jnp.asarray(x), PruneSpec(method="wanda"))
    keep = np.asarray(keep)
    np.testing.assert_array_equal((~keep).sum(axis=0), 16)
    for n in range(w.shape[1]):
        assert scores[keep[:, n], n].min() > scores[~keep[:, n], n].max()


def test_wanda_keeps_outlier_features_and_beats_magnitude_on_the_output():
    w, x = matrix(), outlier_inputs()
    err = {}
    for method in ("magnitude", "wanda"):
        pruned, keep = prune_matrix(jnp.asarray(w), jnp.asarray(x), PruneSpec(method=method))
        err[method] = np.sum((x @ w - x @ np.asarray(pruned)) ** 2)
        if method == "wanda":
            assert np.asarray(keep)[:3].all()  # the 20x features survive in every output
    assert err["wanda"] < 0.5 * err["magnitude"]


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_have_exactly_n_per_m(n, m):
    scores = jnp.asarray(np.abs(matrix()))
    keep = np.asarray(nm_mask(scores, n, m))
    groups = keep.reshape(32 // m, m, 12)
    np.testing.assert_array_equal(groups.sum(axis=1), n)
    s = np.asarray(scores).reshape(32 // m, m, 12)  # the kept are each group's highest
    assert np.all(np.where(groups, s, np.inf).min(axis=1) >= np.where(groups, -np.inf, s).max(1))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_pruned_weights_have_exactly_n_nonzeros_per_m(method):
    w, x = matrix(), outlier_inputs()
    spec = PruneSpec(method=method, nm=(2, 4), block=16)
    pruned, _ = prune_matrix(jnp.asarray(w), jnp.asarray(x), spec)
    np.testing.assert_array_equal((np.asarray(pruned).reshape(8, 4, 12) != 0).sum(axis=1), 2)


def test_ties_prune_exact_counts():
    keep = np.asarray(unstructured_mask(jnp.ones((8, 4)), 0.5, per_output=True))
    np.testing.assert_array_equal(keep.sum(axis=0), 4)  # all tied: still 4 of 8 per column


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("configs/tiny.yaml", ["model.n_kv_heads=2"]).model
    params = init_params(cfg, jax.random.key(0))
    tokens_BL = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 32)).astype(np.int32)
    return cfg, params, tokens_BL


def test_prune_model_is_layer_sequential(tiny):
    """Layer 1's Wanda mask is computed from what the *pruned* layer 0 outputs."""
    cfg, params, tokens_BL = tiny
    spec = PruneSpec(method="wanda")
    pruned, masks = prune_model(cfg, params, tokens_BL, spec)
    x = calibration.embed_inputs(cfg, params, tokens_BL)
    x = calibration.run_layer(cfg, calibration.layer_params(pruned, 0), x)
    inputs = calibration.linear_inputs(cfg, calibration.layer_params(params, 1), x)
    w = params["blocks"]["mlp"]["down"]["w"][1]
    _, keep = prune_matrix(w, inputs["mlp/down/w"], spec)
    np.testing.assert_array_equal(np.asarray(masks["blocks"]["mlp"]["down"]["w"][1]), keep)
    w_q = params["blocks"]["attn"]["q"]["w"][1].reshape(64, -1)
    _, keep_q = prune_matrix(w_q, inputs["attn/q/w"], spec)
    np.testing.assert_array_equal(
        np.asarray(masks["blocks"]["attn"]["q"]["w"][1]).reshape(64, -1), keep_q
    )


def test_prune_model_zeros_exactly_the_masked_weights(tiny):
    cfg, params, tokens_BL = tiny
    pruned, masks = prune_model(cfg, params, tokens_BL, PruneSpec(method="sparsegpt", block=32))
    for path, keep in jax.tree_util.tree_flatten_with_path(masks)[0]:
        w = pruned
        for k in path:
            w = w[k.key]
        np.testing.assert_array_equal(np.asarray(w) != 0, np.asarray(keep))
    assert sparsity_of(pruned, masks)["total"] == 0.5
    np.testing.assert_array_equal(pruned["token_embed"], params["token_embed"])  # not a target


def test_global_magnitude_uses_one_threshold(tiny):
    cfg, params, _ = tiny
    pruned, masks = prune_model(cfg, params, None, PruneSpec(scope="global", sparsity=0.6))
    kept, gone = [], []
    for path, keep in jax.tree_util.tree_flatten_with_path(masks)[0]:
        w = params
        for k in path:
            w = w[k.key]
        kept.append(np.abs(np.asarray(w))[np.asarray(keep)])
        gone.append(np.abs(np.asarray(w))[~np.asarray(keep)])
    assert np.concatenate(kept).min() > np.concatenate(gone).max()
    stats = sparsity_of(pruned, masks)
    assert stats["total"] == pytest.approx(0.6, abs=1e-5)
    assert max(stats.values()) - min(stats.values()) > 0.05  # layers end up unequal


def test_specs_are_checked():
    with pytest.raises(ValueError, match="global"):
        PruneSpec(method="wanda", scope="global")
    with pytest.raises(ValueError, match="N:M"):
        PruneSpec(nm=(4, 4))
    with pytest.raises(ValueError, match="sparsity"):
        PruneSpec(sparsity=1.0)
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(jnp.ones((6, 2)), 2, 4)


def test_quantized_weights_are_refused():
    q = quantize(jnp.ones((8, 4)), fmt="int8", bits=8, group=0, n_in=1, n_out=1)
    with pytest.raises(ValueError, match="not a float array"):
        prune_layer({"mlp": {"up": {"w": q}}}, None, {"mlp/up/w": 1}, PruneSpec())

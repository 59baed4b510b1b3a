"""Optimisers build and step; schedules hit their golden values; the decay mask is right."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config import ModelConfig, OptimConfig
from llm.model import init_params, logical_axes
from llm.train.optim import (
    clip_by_global_norm,
    decay_mask,
    make_optimizer,
    make_schedule,
    muon_dimensions,
)

MODEL = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32)


@pytest.fixture(scope="module")
def params():
    return init_params(MODEL, jax.random.key(0))


def _loss(p):
    """A smooth function of every leaf, so every optimiser must move every leaf."""
    return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree.leaves(p))


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion", "sgd", "muon"])
def test_optimizer_steps_downhill(params, name):
    cfg = OptimConfig(name=name, lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0)
    tx = make_optimizer(cfg, 10, params, logical_axes(MODEL))

    @jax.jit
    def step(p):
        updates, _ = tx.update(jax.grad(_loss)(p), tx.init(p), p)
        return _loss(p), _loss(jax.tree.map(jnp.add, p, updates)), updates

    before, after, updates = step(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert float(after) < float(before)


def test_schedules_golden():
    # Golden values worked out by hand from the schedule definitions (peak 1.0, floor 0.1).
    base = dict(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    cos = make_schedule(OptimConfig(schedule="cosine", **base), 110)
    np.testing.assert_allclose(
        [cos(0), cos(9), cos(10), cos(60), cos(110)], [0.1, 1, 1, 0.55, 0.1], atol=1e-6
    )
    lin = make_schedule(OptimConfig(schedule="linear", **base), 110)
    np.testing.assert_allclose([lin(10), lin(60), lin(110)], [1, 0.55, 0.1], atol=1e-6)
    const = make_schedule(OptimConfig(schedule="constant", **base), 110)
    np.testing.assert_allclose([const(4), const(100)], [0.5, 1.0], atol=1e-6)
    wsd = make_schedule(OptimConfig(schedule="wsd", decay_fraction=0.2, **base), 110)
    # 10 warmup, 78 stable, 22 decay (20% of 110)
    np.testing.assert_allclose([wsd(50), wsd(88), wsd(99), wsd(110)], [1, 1, 0.55, 0.1], atol=1e-6)


def test_decay_mask_excludes_norms_biases_and_stacked_vectors(params):
    mask = decay_mask(OptimConfig(), params, logical_axes(MODEL))
    assert mask["blocks"]["attn"]["q"]["w"] and mask["blocks"]["mlp"]["up"]["w"]
    assert mask["token_embed"]
    # [layers, embed] norm scales are vectors per layer, not matrices
    assert not mask["blocks"]["attn_norm"]["scale"] and not mask["final_norm"]["scale"]
    custom = decay_mask(OptimConfig(no_decay_patterns=("embed",)), params, logical_axes(MODEL))
    assert not custom["token_embed"] and custom["blocks"]["attn"]["q"]["w"]


def test_weight_decay_leaves_masked_params_alone(params):
    cfg = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    tx = make_optimizer(cfg, 10, params, logical_axes(MODEL))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(zero, params)
    assert float(jnp.abs(updates["final_norm"]["scale"]).max()) == 0.0
    w = params["blocks"]["mlp"]["up"]["w"]
    np.testing.assert_allclose(updates["blocks"]["mlp"]["up"]["w"], -0.1 * 0.5 * w, rtol=1e-6)


def test_muon_targets_hidden_matrices_only(params):
    dims = muon_dimensions(params, logical_axes(MODEL))
    assert dims["blocks"]["attn"]["q"]["w"].reduction_axis == 1
    assert dims["blocks"]["attn"]["o"]["w"].output_axis == 3
    assert dims["token_embed"] is None and dims["blocks"]["attn_norm"]["scale"] is None


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping on, and off (norm below max)
def test_clip_by_global_norm_matches_optax(params, max_norm):
    grads = jax.grad(_loss)(params)
    norm = float(optax.tree.norm(grads))
    assert 1e-3 < norm < 1e3  # so the two cases really are above and below the threshold
    ours, state = clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    ref, ref_state = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    assert state == ref_state  # same (empty) state: checkpoints keep their structure
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        if max_norm > norm:
            np.testing.assert_array_equal(a, b)  # below the threshold: untouched, bit for bit
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    if max_norm < norm:
        np.testing.assert_allclose(float(optax.tree.norm(ours)), max_norm, rtol=1e-6)

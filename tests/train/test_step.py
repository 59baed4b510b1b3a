"""The train step: learns, accumulates exactly, compiles once, guards against bad steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches, tiny_config

from llm.model import init_params, logical_axes
from llm.train.losses import make_loss
from llm.train.optim import make_optimizer, make_schedule
from llm.train.state import init_state
from llm.train.step import make_train_step
from llm.train.trainable import MODEL

TRACES = []  # one entry per trace of the shared step's loss function


def _setup(*overrides, loss_fn=None):
    cfg = tiny_config("unused", *overrides)
    params = {MODEL: init_params(cfg.model, jax.random.key(0))}  # everything trainable
    tx = make_optimizer(cfg.optim, cfg.train.steps, params, {MODEL: logical_axes(cfg.model)})
    scale = cfg.train.loss_scale_init if cfg.model.dtype == "float16" else 1.0
    fresh = lambda: init_state(  # noqa: E731
        jax.tree.map(jnp.copy, params), tx, seed=0, loss_scale=scale,
        spike_window=cfg.train.spike_window,
    )  # fmt: skip
    step = make_train_step(
        cfg, loss_fn or make_loss(cfg), tx, make_schedule(cfg.optim, cfg.train.steps)
    )
    return fresh, step


@pytest.fixture(scope="module")
def shared():
    """The default tiny step, compiled once for several tests; counts its traces."""
    inner = make_loss(tiny_config("unused"))

    def counting_loss(params, frozen, batch, key):
        TRACES.append(1)
        return inner(params, frozen, batch, key)

    return _setup(loss_fn=counting_loss)


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)  # host copy: the step donates its input


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_memorizes_a_batch(shared):
    fresh, step = shared
    state = fresh()
    batch = next(SyntheticBatches(8, 16))
    losses = []
    for _ in range(150):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[0] > 5.0  # ~ln(259) at init
    assert losses[-1] < 0.2, losses[::10]
    assert all(b < a for a, b in zip(losses[:100:10], losses[10:110:10], strict=True))


def test_grad_accumulation_equals_big_batch(shared):
    # After one AdamW step the first moment is exactly (1 - b1) * gradient, so comparing the
    # optimiser states compares the accumulated gradients leaf by leaf.
    batch = next(SyntheticBatches(8, 16))
    batch["loss_mask"][:3, 5:] = 0.0  # micro-batches hold different token counts
    results = []
    for fresh, step in (shared, _setup("train.grad_accum=4")):
        new, m = step(fresh(), batch)
        results.append(
            (_copy(new.opt_state), float(m["loss"]), float(m["grad_norm"]), float(m["tokens"]))
        )
    (o1, l1, g1, t1), (o4, l4, g4, t4) = results
    assert t1 == t4 == 8 * 16 - 3 * 11
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    np.testing.assert_allclose(g4, g1, rtol=1e-5)
    mu1, mu4 = o1[1][0].mu, o4[1][0].mu  # chain(clip, adamw): adamw's ScaleByAdamState
    _assert_trees_close(mu4, mu1, rtol=1e-5, atol=1e-9)


def test_compiles_once(shared):
    fresh, step = shared
    state = fresh()
    for i, batch in enumerate(SyntheticBatches(8, 16, limit=4)):
        batch["loss_mask"][0, 0] = np.nan if i == 2 else 1.0  # a bad step must not retrace
        state, m = step(state, batch)
    jax.block_until_ready(m)
    assert len(TRACES) == 1


def test_chunked_loss_matches_plain_through_the_model(shared):
    batch = next(SyntheticBatches(8, 16))
    out = []
    for fresh, step in (shared, _setup("loss.chunk_size=24")):
        new, m = step(fresh(), batch)
        out.append((float(m["loss"]), _copy(new.opt_state)))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
    _assert_trees_close(out[1][1], out[0][1], rtol=1e-5, atol=1e-9)


def test_non_finite_step_is_flagged_and_not_applied(shared):
    fresh, step = shared
    state = fresh()
    batch = next(SyntheticBatches(8, 16))
    batch["loss_mask"][0, 0] = np.nan
    before = _copy(state.params)
    new, m = step(state, batch)
    assert not bool(m["finite"])
    assert not all(jax.tree.leaves(jax.device_get(m["grad_finite"])))
    _assert_trees_equal(new.params, before)


def test_spike_is_skipped_and_counted():
    fresh, step = _setup("train.spike_skip=true", "train.spike_window=8", "train.spike_k=3")
    state = fresh()
    batches = SyntheticBatches(8, 16)
    for _ in range(12):
        state, m = step(state, next(batches))
    assert int(m["skipped"]) == 0
    noise = dict(next(batches))
    rng = np.random.default_rng(0)
    noise["targets"] = rng.integers(0, 256, noise["targets"].shape).astype(np.int32)
    before = _copy(state.params), _copy(state.opt_state)
    state, m = step(state, noise)
    assert int(m["skipped"]) == 1 and bool(m["finite"])
    _assert_trees_equal(state.params, before[0])
    _assert_trees_equal(state.opt_state, before[1])  # the moments and count are kept too


@pytest.mark.slow  # float16 on CPU is emulated: ~20 s to compile and run
def test_fp16_loss_scale_backs_off_on_overflow():
    fresh, step = _setup("model.dtype=float16", "train.loss_scale_init=1e38")
    state = fresh()
    before = _copy(state.params)
    batch = next(SyntheticBatches(8, 16))
    state, m = step(state, batch)
    assert bool(m["finite"]) and float(state.loss_scale) == pytest.approx(5e37)
    _assert_trees_equal(state.params, before)
    state = dataclasses.replace(state, loss_scale=jnp.asarray(1024.0))
    state, m = step(state, batch)
    assert bool(m["finite"]) and float(m["grad_norm"]) > 0
    assert float(state.loss_scale) == 1024.0 and int(state.good_steps) == 1

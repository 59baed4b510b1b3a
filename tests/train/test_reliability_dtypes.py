"""Non-float32 training: every params/compute dtype pair, and bfloat16 with every optimiser,
through real steps of the train step, a checkpoint and its restore (docs/reliability.md).

Before the fix, any `model.param_dtype` other than float32 crashed at step 1: the optimiser
update runs inside a `lax.cond` whose branches must return equal types, and float32 gradients
promoted the bfloat16 moments to float32 in one branch only.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches, tiny_config

from llm.checkpoint import Checkpointer
from llm.model import init_params, logical_axes
from llm.train.losses import make_loss
from llm.train.optim import make_optimizer, make_schedule
from llm.train.state import init_state
from llm.train.step import make_train_step
from llm.train.trainable import MODEL

LOW = ("bfloat16", "float16")
MATRIX = [(p, c, "adamw") for p in LOW for c in ("float32", *LOW)]
MATRIX += [("bfloat16", "bfloat16", name) for name in ("adafactor", "lion", "sgd", "muon")]
STEPS = 4


def _dtypes(state):
    return [str(x.dtype) for x in jax.tree.leaves(state)]


def _setup(cfg):
    params = {MODEL: init_params(cfg.model, jax.random.key(0))}
    tx = make_optimizer(cfg.optim, STEPS, params, {MODEL: logical_axes(cfg.model)})
    scale = cfg.train.loss_scale_init if cfg.model.dtype == "float16" else 1.0
    state = init_state(params, tx, seed=0, loss_scale=scale, spike_window=2)
    return state, make_train_step(cfg, make_loss(cfg), tx, make_schedule(cfg.optim, STEPS))


@pytest.mark.slow  # ten step functions, each compiled (~1 min in all on 2 CPU cores)
@pytest.mark.parametrize(("param_dtype", "dtype", "optimizer"), MATRIX)
def test_low_precision_trains_keeps_its_dtypes_and_restores_exactly(
    tmp_path, param_dtype, dtype, optimizer
):
    cfg = tiny_config(tmp_path, f"model.param_dtype={param_dtype}", f"model.dtype={dtype}",
                      f"optim.name={optimizer}", "optim.warmup_steps=1", "model.n_layers=1",
                      "train.loss_scale_init=256")  # fmt: skip
    state, step = _setup(cfg)
    built = _dtypes(state)
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {param_dtype}
    batches, losses = SyntheticBatches(8, 16), []
    for _ in range(STEPS):
        state, metrics = step(state, next(batches))
        assert bool(metrics["finite"]), metrics
        losses.append(float(metrics["loss"]))
    assert _dtypes(state) == built  # step after step, the state keeps the dtypes it was built with
    if param_dtype == "bfloat16":  # float16 params: AdamW's second moment underflows (see docs)
        assert losses[-1] < losses[0], losses
    ckpt = Checkpointer(tmp_path, keep=3)
    assert ckpt.save(state, data_state={"next_batch": STEPS}, meta={})
    ckpt.wait()
    like = dataclasses.replace(state, step=jnp.zeros((), jnp.int32))
    restored = ckpt.restore(jax.tree.map(jnp.zeros_like, like))
    ckpt.close()
    assert restored.step == STEPS and _dtypes(restored.state) == built
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

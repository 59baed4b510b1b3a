"""The frozen reference policy and per-token log-probabilities (llm/train/logprobs.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import SyntheticBatches

from llm.model import forward, init_params
from llm.train.logprobs import sequence_logprob, token_logprobs
from llm.train.loop import Trainer, train
from llm.train.losses import CausalLMLoss
from llm.train.trainable import MODEL, REFERENCE, Trainable, model_params


class WithReference(CausalLMLoss):
    """Causal LM loss that declares a reference (and checks the reference scores alike)."""

    reference = True


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def _rows(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_reference_is_a_frozen_step0_copy_of_the_policy(tiny):
    cfg = tiny("train.steps=3")
    kw = dict(
        train_batches=SyntheticBatches(8, 16), val_batches=_val, loss=WithReference(cfg.model)
    )
    first = Trainer(cfg, **kw)
    state0 = first.state
    for a, b in zip(
        jax.tree.leaves(state0.params[MODEL]),
        jax.tree.leaves(state0.frozen[REFERENCE][MODEL]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    start = jax.device_get(state0.params[MODEL])
    first.ckpt.close()
    state = train(cfg, **kw)["state"]  # the step donates params: the copy must survive it
    moved = jax.device_get(state.params[MODEL]["blocks"]["attn"]["q"]["w"])
    assert not np.array_equal(moved, start["blocks"]["attn"]["q"]["w"])
    for a, b in zip(
        jax.tree.leaves(state.frozen[REFERENCE][MODEL]), jax.tree.leaves(start), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_reference_under_lora_is_the_base_not_a_second_copy(tiny):
    cfg = tiny("train.steps=2", "peft.method=lora", "peft.rank=2", "optim.lr=1e-2")
    kw = dict(
        train_batches=SyntheticBatches(8, 16), val_batches=_val, loss=WithReference(cfg.model)
    )
    state = train(cfg, **kw)["state"]
    assert MODEL not in state.frozen[REFERENCE]  # the adapter's copy only
    ref_sizes = sum(x.size for x in jax.tree.leaves(state.frozen[REFERENCE]))
    adapter_sizes = sum(x.size for x in jax.tree.leaves(state.params))
    assert ref_sizes == adapter_sizes
    batch = _rows(next(SyntheticBatches(4, 16, seed=3)))
    ref = token_logprobs(cfg.model, state.params, state.frozen, batch, reference=True)
    base = forward(
        cfg.model,
        state.frozen[MODEL],
        batch["inputs"],
        positions_BL=batch["positions"],
        segment_ids_BL=batch["segment_ids"],
    )
    logp = jax.nn.log_softmax(base.logits_BLV.astype(jnp.float32))
    want = jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(ref.logp, want * batch["loss_mask"], atol=1e-5)
    pol = token_logprobs(cfg.model, state.params, state.frozen, batch)
    assert float(jnp.max(jnp.abs(pol.logp - ref.logp))) > 1e-4  # the adapter trained


def test_logprobs_equal_minus_the_cross_entropy_and_take_any_leading_shape(tiny):
    cfg = tiny()
    params = {MODEL: init_params(cfg.model, jax.random.key(0))}
    batch = _rows(next(SyntheticBatches(4, 16)))
    batch["loss_mask"] = batch["loss_mask"].at[:, :5].set(0.0)
    out = CausalLMLoss(cfg.model)(params, {}, batch, None)
    scored = token_logprobs(cfg.model, params, {}, batch)
    np.testing.assert_allclose(-jnp.sum(sequence_logprob(scored.logp)), out.total, rtol=1e-6)
    pairs = {k: v.reshape(2, 2, 16) for k, v in batch.items()}
    np.testing.assert_array_equal(
        token_logprobs(cfg.model, params, {}, pairs).logp.reshape(4, 16), scored.logp
    )
    assert np.all(np.asarray(scored.entropy)[:, :5] == 0) and np.all(
        np.asarray(scored.entropy)[:, 5:] > 0
    )


def test_a_loss_without_a_reference_run_has_none_and_asking_is_an_error(tiny):
    cfg = tiny()
    params = {MODEL: init_params(cfg.model, jax.random.key(0))}
    batch = _rows(next(SyntheticBatches(2, 16)))
    with pytest.raises(ValueError, match="no 'reference' component"):
        token_logprobs(cfg.model, params, {}, batch, reference=True)
    with pytest.raises(ValueError, match="reserved"):
        Trainable(extra={REFERENCE: None})
    assert model_params(params, {REFERENCE: params}) is not None  # ignored by the merge


def test_a_run_with_a_reference_prints_its_memory_plan_at_start(tiny, capsys):
    cfg = tiny("train.steps=1", "train.progress_bar=false")
    kw = dict(
        train_batches=SyntheticBatches(8, 16), val_batches=_val, loss=WithReference(cfg.model)
    )
    train(cfg, **kw)
    err = capsys.readouterr().err
    assert "reference" in err and "component" in err, err[:2000]
    train(
        tiny(
            "train.steps=1",
            "train.progress_bar=false",
            "train.run_dir=" + str(cfg.train.run_dir) + "_plain",
        ),
        train_batches=SyntheticBatches(8, 16),
        val_batches=_val,
    )
    assert "component" not in capsys.readouterr().err  # pretraining prints no plan

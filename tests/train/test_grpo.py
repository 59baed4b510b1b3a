"""GRPO (llm/train/losses/grpo.py) against its formula written out in NumPy.

The NumPy statement below is the paper's objective (Shao et al. 2024, arXiv:2402.03300,
eq. 3, with the k3 KL estimator of eq. 4), DAPO's asymmetric clip (arXiv:2503.14476, eq. 8)
and the three aggregations (GRPO's per-sequence mean, DAPO's token mean, Dr. GRPO's constant
normaliser, arXiv:2503.20783), computed in float64 independently of the JAX code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import load_config
from llm.model import init_params, logical_axes
from llm.train.build import run_trainable
from llm.train.logprobs import token_logprobs
from llm.train.losses import make_loss
from llm.train.losses.grpo import EPS, GRPOLoss, group_advantages
from llm.train.losses.rl import Rollouts
from llm.train.trainable import Trainable

B, L, T_MAX = 4, 7, 6
AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def _fixture(seed: int = 0, lengths=(1, 3, 6, 4)):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, L), np.float32)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = 1.0  # completions start after a one-token prompt
    logp = rng.normal(-2.0, 0.5, (B, L)) * mask
    old = (logp + rng.normal(0, 0.3, (B, L))) * mask  # ratios on both sides of the clip
    ref = (logp + rng.normal(0, 0.4, (B, L))) * mask
    adv = rng.normal(0, 1, B).astype(np.float32)
    batch = {"loss_mask": mask, "old_logp": old, "ref_logp": ref, "advantages": adv}
    return logp, batch


def numpy_grpo(logp, batch, agg, clip_low, clip_high, kl_coef):
    """(loss value, d loss / d logp) in float64, straight from the formulas."""
    mask, old, ref, A = (np.float64(batch[k]) for k in ("loss_mask", "old_logp", "ref_logp",
                                                         "advantages"))  # fmt: skip
    A = A[:, None]
    ratio = np.exp(logp - old)
    plain, clipped = ratio * A, np.clip(ratio, 1 - clip_low, 1 + clip_high) * A
    use_plain = plain <= clipped  # min picks the unclipped term: gradient flows
    d = ref - logp
    per_token = -np.minimum(plain, clipped) + kl_coef * (np.exp(d) - d - 1)
    d_token = np.where(use_plain, -ratio * A, 0.0) + kl_coef * (1 - np.exp(d))
    n = mask.sum(1)
    if agg == "token_mean":
        w = mask / mask.sum()
    elif agg == "sequence_mean":
        w = mask / n[:, None] / B
    else:
        w = mask / T_MAX / B
    return float((per_token * w).sum()), d_token * w


def _jax_loss(loss: GRPOLoss, logp, batch):
    def value(lp):
        per_token, _ = loss.per_token(lp, {k: jnp.asarray(v) for k, v in batch.items()})
        weight, reduce_loss, _ = loss.aggregate(jnp.asarray(batch["loss_mask"]))
        return reduce_loss(per_token) / weight

    lp = jnp.asarray(logp, jnp.float32)
    return float(value(lp)), np.asarray(jax.grad(value)(lp))


def _loss(agg="sequence_mean", clip_low=0.2, clip_high=0.28, kl_coef=0.04) -> GRPOLoss:
    return GRPOLoss(None, clip_low, clip_high, kl_coef, True, agg, max_new_tokens=T_MAX)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("kl_coef", [0.0, 0.04, 1.0])
def test_loss_and_gradient_equal_numpy(agg, kl_coef):
    logp, batch = _fixture()
    loss = _loss(agg, kl_coef=kl_coef)
    got, grad = _jax_loss(loss, logp, batch)
    want, want_grad = numpy_grpo(logp, batch, agg, 0.2, 0.28, kl_coef)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert np.abs(want_grad).max() > 1e-3  # not a vacuous comparison


def test_dapo_clip_higher_golden():
    """ratio e^0.3 = 1.3499 with A = +1: the clipped branch is 1 + clip_high (DAPO's 0.28
    allows 1.28, symmetric 0.2 only 1.2), and the clipped token passes no gradient."""
    mask = np.array([[0.0, 1.0]], np.float32)
    zeros = np.zeros((1, 2), np.float32)
    batch = {"loss_mask": mask, "old_logp": zeros, "ref_logp": zeros, "advantages": np.ones(1)}
    logp = np.array([[0.0, 0.3]], np.float32)
    for high, want in ((0.28, -1.28), (0.2, -1.2), (0.5, -np.exp(0.3))):
        value, grad = _jax_loss(_loss("token_mean", 0.2, high, 0.0), logp, batch)
        np.testing.assert_allclose(value, want, rtol=1e-6)
        assert grad[0, 1] == 0.0 if high < 0.3 else grad[0, 1] < 0


def test_aggregations_differ_only_when_lengths_differ():
    logp, batch = _fixture(1, lengths=(1, 3, 6, 4))
    values = {a: _jax_loss(_loss(a), logp, batch)[0] for a in AGGREGATIONS}
    assert len({round(v, 6) for v in values.values()}) == 3
    logp, batch = _fixture(1, lengths=(6, 6, 6, 6))  # equal lengths n = T_MAX: all agree
    values = {a: _jax_loss(_loss(a), logp, batch)[0] for a in AGGREGATIONS}
    np.testing.assert_allclose(list(values.values()), values["token_mean"], rtol=1e-6)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batch_sums_add_up_to_the_batch(agg):
    """total / weight over two micro-batches equals the whole batch (grad accumulation)."""
    logp, batch = _fixture(2)
    loss = _loss(agg)

    def sums(rows):
        part = {k: jnp.asarray(v[rows]) for k, v in batch.items()}
        per_token, _ = loss.per_token(jnp.asarray(logp[rows], jnp.float32), part)
        weight, reduce_loss, _ = loss.aggregate(part["loss_mask"])
        return float(reduce_loss(per_token)), float(weight)

    (t1, w1), (t2, w2) = sums(slice(0, 1)), sums(slice(1, 4))
    whole, _ = _jax_loss(loss, logp, batch)
    np.testing.assert_allclose((t1 + t2) / (w1 + w2), whole, rtol=1e-6)


def test_group_advantages_equal_numpy():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0], np.float32)
    group = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    got = group_advantages(rewards, group, scale=True)
    np.testing.assert_allclose(got[:4], (rewards[:4] - 0.5) / (0.5 + EPS), rtol=1e-6)
    np.testing.assert_array_equal(got[4:8], 0.0)  # one reward for the group: no signal
    np.testing.assert_allclose(got[8:], [1.0 / (1.0 + EPS), -1.0 / (1.0 + EPS)], rtol=1e-6)
    unscaled = group_advantages(rewards, group, scale=False)  # Dr. GRPO
    np.testing.assert_allclose(unscaled, [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, -1], atol=1e-7)


# ------------------------------------------------------------------ with a tiny model


def _tiny(tmp_path, *overrides):
    return load_config(None, [
        "model.vocab_size=259", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "model.d_ff=64", "model.max_seq_len=16", "train.seq_len=12", "loss.name=grpo",
        f"train.run_dir={tmp_path}",
        *overrides,
    ])  # fmt: skip


def _rows(n=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, (n, length + 1)).astype(np.int32)
    mask = np.zeros((n, length), np.float32)
    for i in range(n):
        mask[i, 3 : 4 + 2 * i] = 1.0
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
            "positions": np.tile(np.arange(length, dtype=np.int32), (n, 1)),
            "segment_ids": np.ones((n, length), np.int32)}  # fmt: skip


def _state(cfg, loss):
    trainable = run_trainable(cfg, loss, Trainable())
    model = jax.jit(lambda key: init_params(cfg.model, key))(jax.random.key(0))  # eager: slow
    split = trainable.split(model, logical_axes(cfg.model), key=jax.random.key(1))
    return split.params, split.frozen


def test_ratio_one_and_zero_advantages_give_zero_gradient(tmp_path):
    """The policy that sampled (ratio 1), zero advantages and the reference equal to the
    policy (k3's gradient is 0 at d = 0): no update, though the loss is well defined."""
    cfg = _tiny(tmp_path, "loss.kl_coef=0.1")
    loss = make_loss(cfg)
    assert loss.reference
    params, frozen = _state(cfg, loss)
    rows = {k: jnp.asarray(v) for k, v in _rows().items()}
    scored = jax.device_get(jax.jit(loss.score_rollouts)(params, frozen, rows))
    np.testing.assert_array_equal(scored["old_logp"], scored["ref_logp"])
    rewards = np.ones(4, np.float32)  # one group, one reward: zero advantages
    rollouts = Rollouts(_rows(), scored["old_logp"], rewards, np.zeros(4, np.int32))
    batch, metrics, state = loss.training_batch(rollouts, scored, {})
    assert state == {} and metrics["zero_std_groups"] == 1.0 and metrics["kl"] == 0.0
    np.testing.assert_array_equal(batch["advantages"], 0.0)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    grad_fn = jax.jit(jax.grad(lambda p, b: loss(p, frozen, b, None).total))
    grads = grad_fn(params, batch)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) == 0.0
    batch["advantages"] = jnp.asarray([1.0, -1.0, 0.5, 0.0])  # some signal: a real gradient
    grads = grad_fn(params, batch)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-4


def test_call_reads_the_training_forward(tmp_path):
    """`__call__` = the formula on `token_logprobs` of the batch (temperature included)."""
    cfg = _tiny(tmp_path, "loss.aggregation=token_mean")
    loss = dataclasses.replace(make_loss(cfg), temperature=0.7)
    params, frozen = _state(cfg, loss)
    rows = {k: jnp.asarray(v) for k, v in _rows(seed=3).items()}
    logp = np.asarray(token_logprobs(cfg.model, params, frozen, rows, temperature=0.7).logp)
    rng, mask = np.random.default_rng(4), np.asarray(rows["loss_mask"])
    batch = {"loss_mask": mask, "advantages": rng.normal(0, 1, 4).astype(np.float32)}
    for key in ("old_logp", "ref_logp"):
        batch[key] = ((logp + rng.normal(0, 0.3, logp.shape)) * mask).astype(np.float32)
    out = loss(params, frozen, {**rows, **{k: jnp.asarray(v) for k, v in batch.items()}}, None)
    want, _ = numpy_grpo(np.float64(logp), batch, "token_mean", 0.2, 0.2, 0.04)
    np.testing.assert_allclose(float(out.total / out.weight), want, rtol=1e-5)
    assert float(out.weight) == batch["loss_mask"].sum()


def test_no_reference_without_kl(tmp_path):
    cfg = _tiny(tmp_path, "loss.kl_coef=0")
    loss = make_loss(cfg)
    assert not loss.reference and "ref_logp" not in loss.batch_axes
    params, frozen = _state(cfg, loss)
    assert "reference" not in frozen
    scored = loss.score_rollouts(params, frozen, {k: jnp.asarray(v) for k, v in _rows().items()})
    assert set(scored) == {"old_logp"}


def test_constant_aggregation_needs_the_rollout_length():
    mask = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"rl\.max_new_tokens"):
        GRPOLoss(None, aggregation="constant").aggregate(mask)

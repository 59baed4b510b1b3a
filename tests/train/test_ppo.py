"""The PPO loss (llm/train/losses/ppo.py) against NumPy statements of Schulman et al. 2017's
clipped objective and value clipping, its training batch against plain loops, and train
steps of a tiny model on hand-built rollouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_advantages import loop_gae
from train_fixtures import SyntheticBatches

from llm.train.advantages import whiten
from llm.train.build import abstract_split, run_trainable
from llm.train.kl_control import AdaptiveKLController, FixedKLController
from llm.train.logprobs import sequence_logprob, token_logprobs
from llm.train.loop import Trainer
from llm.train.losses import make_loss
from llm.train.losses.ppo import VALUE_HEAD, PPOLoss
from llm.train.losses.rl import Rollouts
from llm.train.trainable import MODEL, REFERENCE

# ratios exp(logp - old) of 0.5 .. 1.5 against advantages of both signs: with clip 0.2 each
# side of the clip is taken for each sign of the advantage
LOG_RATIO = np.log(np.array([0.5, 0.75, 0.9, 1.0, 1.1, 1.3, 1.5] * 2, np.float32))
ADV = np.array([1.0] * 7 + [-2.0] * 7, np.float32)


def numpy_policy_loss(log_ratio, adv, eps):
    """Schulman et al. 2017 (arXiv:1707.06347) eq. 7, negated; d/dlogp by hand: the unclipped
    branch -A r has derivative -A r, the clipped one is constant outside [1-eps, 1+eps]."""
    r = np.exp(log_ratio.astype(np.float64))
    plain, clipped = -adv * r, -adv * np.clip(r, 1 - eps, 1 + eps)
    loss = np.maximum(plain, clipped)
    grad = np.where(plain >= clipped, -adv * r, 0.0)
    return loss, grad, clipped > plain


def test_policy_loss_equals_the_clipped_objective_values_and_gradients():
    loss = PPOLoss(model=None, clip=0.2)
    old = jnp.asarray(np.linspace(-3, -1, LOG_RATIO.size, dtype=np.float32))
    logp = old + LOG_RATIO
    out, was_clipped = loss.policy_loss(logp, old, jnp.asarray(ADV))
    grad = jax.grad(lambda lp: jnp.sum(loss.policy_loss(lp, old, jnp.asarray(ADV))[0]))(logp)
    want, want_grad, want_clipped = numpy_policy_loss(LOG_RATIO, ADV, 0.2)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    # clipped: A > 0 with r = 1.3, 1.5 (above 1.2); A < 0 with r = 0.5, 0.75 (below 0.8)
    np.testing.assert_array_equal(np.asarray(was_clipped) > 0, want_clipped)
    assert np.flatnonzero(want_clipped).tolist() == [5, 6, 7, 8]
    assert np.all(want_grad[[5, 6, 7, 8]] == 0) and np.all(want_grad[[0, 1, 9, 10]] != 0)


def numpy_value_loss(v, old, ret, eps):
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) and its dV by hand."""
    moved = old + np.clip(v - old, -eps, eps)
    plain, clipped = (v - ret) ** 2, (moved - ret) ** 2
    inside = np.abs(v - old) < eps
    grad = np.where(plain >= clipped, v - ret, (moved - ret) * inside)
    return 0.5 * np.maximum(plain, clipped), grad


def test_value_loss_equals_clipped_value_loss_values_and_gradients():
    old = np.zeros(8, np.float32)
    # V moved beyond the clip up and down, with returns on either side, and inside the clip
    v = np.array([0.5, 0.5, -0.5, -0.5, 0.1, 0.1, 0.3, -0.3], np.float32)
    ret = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.25, -0.1], np.float32)
    loss = PPOLoss(model=None, value_clip=0.2)
    out = loss.value_loss(jnp.asarray(v), jnp.asarray(old), jnp.asarray(ret))
    grad = jax.grad(lambda x: jnp.sum(loss.value_loss(x, jnp.asarray(old), jnp.asarray(ret))))(
        jnp.asarray(v)
    )
    want, want_grad = numpy_value_loss(v, old, ret, 0.2)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)
    # V = 0.5 moved away from R = 1? no, towards it: the clipped error (0.2 - 1)^2 is larger,
    # so the loss holds V's step at the clip and its gradient is 0
    assert want[0] == pytest.approx(0.5 * 0.8**2) and want_grad[0] == 0
    assert want_grad[1] == pytest.approx(1.5)  # moved away from R: the plain error, 1.5


def rollout_rows(rng, N, L, vocab=259, prompt=(2, 5)):
    """SFT-style rows [prompt | completion | padding] of random lengths (a last EOS-like input
    whose target is padding, as llm/data/sft.py's render)."""
    tokens = np.zeros((N, L + 1), np.int32)
    seg = np.zeros((N, L), np.int32)
    mask = np.zeros((N, L), np.float32)
    for n in range(N):
        p = int(rng.integers(*prompt))
        c = int(rng.integers(1, L - p + 1))
        tokens[n, : p + c] = rng.integers(1, vocab, p + c)
        seg[n, : p + c] = 1
        mask[n, p - 1 : p + c - 1] = 1  # targets[t] = inputs[t + 1] is a completion token
    return {
        "inputs": tokens[:, :L],
        "targets": tokens[:, 1:] * seg,
        "positions": np.tile(np.arange(L, dtype=np.int32), (N, 1)) * seg,
        "segment_ids": seg,
        "loss_mask": mask,
    }


def hand_rollouts(rng, N=5, L=12):
    rows = rollout_rows(rng, N, L)
    scored = {
        "old_logp": -rng.uniform(0.1, 3, (N, L)).astype(np.float32) * rows["loss_mask"],
        "ref_logp": -rng.uniform(0.1, 3, (N, L)).astype(np.float32) * rows["loss_mask"],
        "old_values": rng.normal(size=(N, L)).astype(np.float32) * rows["loss_mask"],
    }
    rewards = rng.normal(size=N).astype(np.float32)
    group = np.arange(N, dtype=np.int32)
    return Rollouts(rows, scored["old_logp"].copy(), rewards, group), scored


@pytest.mark.parametrize("whiten_advantages", [True, False])
def test_training_batch_is_the_kl_penalised_reward_and_gae(whiten_advantages):
    rollouts, scored = hand_rollouts(np.random.default_rng(0))
    loss = PPOLoss(model=None, gamma=0.9, lam=0.8, kl_coef=0.3, kl_target=4.0, kl_horizon=50)
    loss = PPOLoss(**{**loss.__dict__, "whiten_advantages": whiten_advantages})
    batch, metrics, state = loss.training_batch(rollouts, scored, {})
    mask = rollouts.rows["loss_mask"]
    kl = scored["old_logp"] - scored["ref_logp"]
    rewards = -0.3 * kl * mask  # Ziegler et al. eq. 2, the score on the last completion token
    for n in range(rollouts.size):
        rewards[n, np.flatnonzero(mask[n])[-1]] += rollouts.rewards[n]
    adv, ret = loop_gae(rewards, scored["old_values"], mask, 0.9, 0.8)
    want_adv = whiten(adv, mask) if whiten_advantages else adv
    np.testing.assert_allclose(batch["advantages"], want_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch["returns"], ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["old_logp"], scored["old_logp"])
    seq_kl = (kl * mask).sum(1).mean()
    assert metrics["kl"] == pytest.approx(seq_kl, rel=1e-5)
    assert metrics["kl_coef"] == 0.3
    assert metrics["sample_logp_gap"] == 0.0
    want_state = AdaptiveKLController(0.3, 4.0, 50).update({}, seq_kl, rollouts.size)
    assert state["kl_coef"] == pytest.approx(want_state["kl_coef"], rel=1e-6)
    assert set(batch) == set(loss.batch_axes)
    _, _, again = loss.training_batch(rollouts, scored, state)  # the next iteration's beta
    assert again["kl_coef"] != state["kl_coef"]


def test_whiten_rewards_rescales_the_scores_and_bad_rows_are_errors():
    rollouts, scored = hand_rollouts(np.random.default_rng(1))
    base = dict(model=None, kl_coef=0.0, whiten_advantages=False, gamma=1.0, lam=1.0)
    plain, _, _ = PPOLoss(**base).training_batch(rollouts, scored, {})
    white, _, _ = PPOLoss(**base, whiten_rewards=True).training_batch(rollouts, scored, {})
    # gamma = lam = 1 and no KL: every return is the (rescaled) score
    first = np.argmax(rollouts.rows["loss_mask"], axis=1)
    rows = np.arange(rollouts.size)
    # returns are (R - V) + V in float32: exact up to one rounding of |V| ~ 1
    np.testing.assert_allclose(plain["returns"][rows, first], rollouts.rewards, atol=1e-6)
    r = rollouts.rewards
    want = (r - r.mean()) / np.sqrt(r.var() + 1e-8) + r.mean()
    np.testing.assert_allclose(white["returns"][rows, first], want, rtol=1e-5, atol=1e-6)
    rollouts.rows["loss_mask"][2] = 0
    with pytest.raises(ValueError, match=r"rollout rows \[2\] have no completion token"):
        PPOLoss(**base).training_batch(rollouts, scored, {})
    rollouts.rows["loss_mask"][2, [1, 3]] = 1
    with pytest.raises(ValueError, match="row 2 has 2 separate completion spans"):
        PPOLoss(**base).training_batch(rollouts, scored, {})


def test_the_registry_builds_ppo_from_the_config(tiny):
    loss = make_loss(tiny("loss.name=ppo", "loss.clip=0.1", "loss.kl_target=null"))
    assert isinstance(loss, PPOLoss) and loss.clip == 0.1 and loss.reference
    assert isinstance(loss.controller, FixedKLController)
    assert isinstance(make_loss(tiny("loss.name=ppo")).controller, AdaptiveKLController)
    with pytest.raises(ValueError, match=r"temperature=0\.0 must be positive"):
        PPOLoss(model=None, temperature=0.0)


def test_the_value_head_is_trained_beside_lora_and_is_not_in_the_reference(tiny):
    cfg = tiny("loss.name=ppo", "peft.method=lora", "peft.rank=2")
    loss = make_loss(cfg)
    split = abstract_split(cfg, run_trainable(cfg, loss))  # shapes only: nothing compiled
    assert VALUE_HEAD in split.params and MODEL not in split.params
    assert set(split.frozen[REFERENCE]) == {"lora"}  # the adapter's copy, no value head
    assert split.params[VALUE_HEAD]["w"].shape == (cfg.model.d_model,)
    head = loss.components(cfg.model)[VALUE_HEAD].build(jax.random.key(0))
    assert not np.any(np.asarray(head["w"])) and float(head["b"]) == 0.0  # zero init


def fixed_rows(sequences, L=16, prompt=4):
    """Rows of given token sequences whose first `prompt` tokens are the prompt."""
    N = len(sequences)
    tokens = np.zeros((N, L + 1), np.int32)
    seg = np.zeros((N, L), np.int32)
    mask = np.zeros((N, L), np.float32)
    for n, seq in enumerate(sequences):
        tokens[n, : len(seq)] = seq
        seg[n, : len(seq)] = 1
        mask[n, prompt - 1 : len(seq) - 1] = 1
    positions = np.tile(np.arange(L, dtype=np.int32), (N, 1)) * seg
    return dict(inputs=tokens[:, :L], targets=tokens[:, 1:], positions=positions,
                segment_ids=seg, loss_mask=mask)  # fmt: skip


def _trainer(tiny, *overrides):
    cfg = tiny("loss.name=ppo", "optim.weight_decay=0", "train.steps=40", *overrides)
    return Trainer(cfg, train_batches=SyntheticBatches(8, 16), val_batches=lambda: [])


def _iteration(tr, rollouts, state):
    score = tr.__dict__.setdefault("_score", jax.jit(tr.loss.score_rollouts))
    scored = score(tr.state.params, tr.state.frozen, rollouts.rows)
    return tr.loss.training_batch(rollouts, jax.device_get(scored), state)


def test_ratio_1_and_zero_advantages_leave_the_decoder_unchanged(tiny):
    tr = _trainer(tiny, "loss.value_coef=0")
    rollouts, _ = hand_rollouts(np.random.default_rng(2), N=8, L=16)
    batch, metrics, _ = _iteration(tr, rollouts, {})
    assert metrics["kl"] == 0.0  # at step 0 the policy is the reference
    start = jax.device_get(tr.state.params)
    zero = {**batch, "advantages": np.zeros_like(batch["advantages"])}
    tr.state, m = tr.step_fn(tr.state, tr.put(zero))
    # ratio 1: the step's forward equals the scoring pass's up to the last bit of float32
    # (two compilations fuse differently), so the k3 estimate is ~1e-14, not exactly 0
    assert float(m["approx_kl"]) < 1e-10 and float(m["clip_fraction"]) == 0.0
    assert float(m["policy_loss"]) == 0.0 and float(m["grad_norm"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(tr.state.params), start)
    # the same step with the batch's advantages moves the decoder (the test can fail)
    tr.state, m = tr.step_fn(tr.state, tr.put(batch))
    moved = jax.device_get(tr.state.params)[MODEL]["blocks"]["attn"]["q"]["w"]
    assert float(m["grad_norm"]) > 0 and not np.array_equal(
        moved, start[MODEL]["blocks"]["attn"]["q"]["w"]
    )
    tr.ckpt.close()


def test_ppo_steps_raise_the_rewarded_completion_and_fit_the_values(tiny):
    """One prompt, two completions: "good" scores +1, "bad" -1. Six iterations of PPO on
    these rollouts must raise log p(good) - log p(bad) by more than 10 nats, with the KL to
    the reference and the adaptive coefficient reported, and the value head fitting."""
    tr = _trainer(tiny, "loss.kl_coef=0.01", "loss.kl_target=1.0", "loss.kl_horizon=100")
    rows = fixed_rows([[10, 20, 30, 40, 50, 60, 70, 80, 3], [10, 20, 30, 40, 90, 91, 92, 93, 3]])
    rows = {k: np.tile(v, (4, 1)) for k, v in rows.items()}  # even rows good, odd rows bad
    rollouts = Rollouts(rows, np.zeros((8, 16), np.float32), np.tile([1.0, -1.0], 4), np.zeros(8))
    pair = {k: jnp.asarray(v[:2]) for k, v in rows.items()}

    def gap():
        logp = token_logprobs(tr.cfg.model, tr.state.params, tr.state.frozen, pair).logp
        return float(sequence_logprob(logp)[0] - sequence_logprob(logp)[1])

    start, state, history = gap(), {}, []
    for _ in range(6):
        batch, metrics, state = _iteration(tr, rollouts, state)
        for _ in range(2):
            tr.state, m = tr.step_fn(tr.state, tr.put(batch))
        history.append((metrics, jax.device_get(m)))
    assert gap() - start > 10.0  # measured: 0.23 -> 17.2 nats
    # the KL to the reference moved off 0 but stayed under the 1-nat target (measured at most
    # 0.57), so the adaptive coefficient fell at every iteration
    assert history[0][0]["kl"] == 0.0 and history[-1][0]["kl"] > 0.2  # measured 0.46
    betas = [h[0]["kl_coef"] for h in history]
    assert betas[0] == 0.01 and all(b > a for a, b in zip(betas[1:], betas, strict=False))
    assert history[-1][0]["value_explained_variance"] > 0.5  # measured 0 -> 0.69
    assert float(history[-1][1]["value_loss"]) < 0.5 * float(history[0][1]["value_loss"])
    tr.ckpt.close()

"""DPO, cDPO, IPO, SimPO and ORPO (llm/train/losses/dpo.py) against their papers' formulas.

References are written in NumPy float64 from the papers (equation numbers in dpo.py); their
gradients with respect to the log-probabilities are derived by hand from the same formulas
(d/dx -log sigmoid(x) = -sigmoid(-x); d/da log-odds(a) = 1 / (1 - e^a)). Full-loss tests score
the pairs with a plain `forward` and a NumPy log-softmax, apart from `token_logprobs`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from preference_fixtures import PAIR_OVERRIDES, case_pairs, numpy_pair_logps, tokenizer
from train_fixtures import tiny_config

from llm.config import load_config
from llm.model import init_params, logical_axes
from llm.train.build import run_trainable
from llm.train.losses import (
    CDPOLoss,
    DPOLoss,
    IPOLoss,
    KTOLoss,
    ORPOLoss,
    SimPOLoss,
    check_batch_leaves,
    make_loss,
)
from llm.train.losses.dpo import log_odds, score_pairs
from llm.train.trainable import MODEL, REFERENCE, Trainable

LOG2 = float(np.log(2.0))


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def logsig(x):
    return -np.logaddexp(0.0, -x)


def np_log_odds(a):
    return a - np.log1p(-np.exp(a))


# Each reference: (loss [B], d loss / d (pi_c, pi_r, ref_c, ref_r), (reward_c, reward_r))
# in float64; the rewards are what each paper calls the implicit reward (dpo.py docstring).
def ref_dpo(pi_c, pi_r, ref_c, ref_r, len_c, len_r, beta):
    z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    g = -beta * sig(-z)  # d/d pi_c
    return -logsig(z), (g, -g, -g, g), (beta * (pi_c - ref_c), beta * (pi_r - ref_r))


def ref_cdpo(pi_c, pi_r, ref_c, ref_r, len_c, len_r, beta, eps):
    z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    dz = -(1 - eps) * sig(-z) + eps * sig(z)
    g = beta * dz
    rewards = (beta * (pi_c - ref_c), beta * (pi_r - ref_r))
    return -(1 - eps) * logsig(z) - eps * logsig(-z), (g, -g, -g, g), rewards


def ref_ipo(pi_c, pi_r, ref_c, ref_r, len_c, len_r, beta):
    h = (pi_c - ref_c) - (pi_r - ref_r)
    g = 2 * (h - 1 / (2 * beta))
    rewards = (beta * (pi_c - ref_c), beta * (pi_r - ref_r))
    return (h - 1 / (2 * beta)) ** 2, (g, -g, -g, g), rewards


def ref_simpo(pi_c, pi_r, ref_c, ref_r, len_c, len_r, beta, gamma):
    z = beta * pi_c / len_c - beta * pi_r / len_r - gamma
    dz = -sig(-z)
    zero = np.zeros_like(z)
    rewards = (beta * pi_c / len_c, beta * pi_r / len_r)
    return -logsig(z), (beta / len_c * dz, -beta / len_r * dz, zero, zero), rewards


def ref_orpo(pi_c, pi_r, ref_c, ref_r, len_c, len_r, lam):
    a_c, a_r = pi_c / len_c, pi_r / len_r
    d = np_log_odds(a_c) - np_log_odds(a_r)
    zero = np.zeros_like(d)
    g_c = (-1 - lam * sig(-d) / (1 - np.exp(a_c))) / len_c
    g_r = lam * sig(-d) / (1 - np.exp(a_r)) / len_r
    rewards = (np_log_odds(a_c), np_log_odds(a_r))
    return -a_c - lam * logsig(d), (g_c, g_r, zero, zero), rewards


CASES = [
    (DPOLoss(None, beta=0.1), lambda *a: ref_dpo(*a, 0.1)),
    (DPOLoss(None, beta=0.5), lambda *a: ref_dpo(*a, 0.5)),
    (CDPOLoss(None, beta=0.2, label_smoothing=0.15), lambda *a: ref_cdpo(*a, 0.2, 0.15)),
    (IPOLoss(None, beta=0.1), lambda *a: ref_ipo(*a, 0.1)),
    (IPOLoss(None, beta=2.0), lambda *a: ref_ipo(*a, 2.0)),
    (SimPOLoss(None, beta=2.0, gamma=1.0), lambda *a: ref_simpo(*a, 2.0, 1.0)),
    (ORPOLoss(None, lam=0.1), lambda *a: ref_orpo(*a, 0.1)),
    (ORPOLoss(None, lam=1.5), lambda *a: ref_orpo(*a, 1.5)),
]
IDS = ["dpo", "dpo_b0.5", "cdpo", "ipo", "ipo_b2", "simpo", "orpo", "orpo_l1.5"]


def _logps(seed=0, B=6):
    """Fixed summed log-probs of plausible size: lengths 3..30, -0.2..-4 nats per token."""
    rng = np.random.default_rng(seed)
    len_c, len_r = rng.integers(3, 31, B).astype(float), rng.integers(3, 31, B).astype(float)
    per = lambda: rng.uniform(-4.0, -0.2, B)  # noqa: E731
    return per() * len_c, per() * len_r, per() * len_c, per() * len_r, len_c, len_r


def _jax(loss, args, rewards=False):
    """(loss [B], grads of its sum w.r.t. pi_c, pi_r, ref_c, ref_r) of loss.terms, and with
    `rewards` the implicit rewards (chosen, rejected)."""
    f = lambda *x: loss.terms(*x).loss  # noqa: E731
    x = [jnp.asarray(a, jnp.float32) for a in args]
    grads = jax.grad(lambda *x: jnp.sum(f(*x)), argnums=(0, 1, 2, 3))(*x)
    out = np.asarray(f(*x)), [np.asarray(g) for g in grads]
    if rewards:
        t = loss.terms(*x)
        out = (*out, (np.asarray(t.chosen), np.asarray(t.rejected)))
    return out


@pytest.mark.parametrize(("loss", "reference"), CASES, ids=IDS)
def test_each_loss_equals_its_papers_formula_values_and_gradients(loss, reference):
    for seed in range(3):
        args = _logps(seed)
        value, grads, rewards = _jax(loss, args, rewards=True)
        want, want_grads, want_rewards = reference(*args)
        np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6)
        for g, w in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(rewards, want_rewards, rtol=1e-5, atol=1e-6)


def test_dpo_golden_value_by_hand():
    # pi_c - ref_c = 1, pi_r - ref_r = -1, so h = 2 and the loss is log(1 + e^-0.2)
    out = DPOLoss(None, beta=0.1).terms(
        *map(jnp.asarray, ([-10.0], [-12.0], [-11.0], [-11.0])), 1, 1
    )
    np.testing.assert_allclose(float(out.loss[0]), 0.598138869, rtol=1e-6)
    np.testing.assert_allclose(
        [float(out.chosen[0]), float(out.rejected[0])], [0.1, -0.1], rtol=1e-6
    )


@pytest.mark.parametrize("beta", [1e-8, 0.1, 10.0, 1e4])
def test_equal_chosen_and_rejected_give_log2_and_symmetric_gradients(beta):
    pi, ref, n = np.array([-30.0, -5.0, -0.5]), np.array([-28.0, -9.0, -0.5]), np.ones(3) * 7
    for loss in (DPOLoss(None, beta), CDPOLoss(None, beta, 0.2)):
        value, (g_c, g_r, _, _) = _jax(loss, (pi, pi, ref, ref, n, n))
        np.testing.assert_allclose(value, LOG2, rtol=1e-6)  # (1 - eps) log 2 + eps log 2
        np.testing.assert_allclose(g_c, -beta / 2 * (1 - 2 * getattr(loss, "label_smoothing", 0)))
        np.testing.assert_allclose(g_r, -g_c, rtol=1e-6)
    simpo = SimPOLoss(None, beta=2.0, gamma=0.7)
    np.testing.assert_allclose(_jax(simpo, (pi, pi, ref, ref, n, n))[0], np.log1p(np.exp(0.7)))


@pytest.mark.parametrize(("loss", "reference"), CASES, ids=IDS)
def test_tiny_and_huge_beta_and_spread_log_probs_stay_finite(loss, reference):
    pi_c, pi_r = np.array([-400.0, -3.0, -1e-3, -60.0]), np.array([-2.0, -500.0, -80.0, -1e-3])
    ref_c, ref_r, lens = np.array([-10.0, -8, -5, -40]), np.array([-9.0, -7, -6, -30]), np.ones(4)
    for scale in (1e-8, 1e4):
        tweak = {"lam" if isinstance(loss, ORPOLoss) else "beta": scale}
        value, grads = _jax(type(loss)(None, **tweak), (pi_c, pi_r, ref_c, ref_r, lens * 20, lens))
        assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
    beta0 = _jax(DPOLoss(None, 1e-8), (pi_c, pi_r, ref_c, ref_r, lens, lens))[0]
    want = ref_dpo(pi_c, pi_r, ref_c, ref_r, lens, lens, 1e-8)[0]  # log 2 - beta h / 2 + ...
    np.testing.assert_allclose(beta0, want, rtol=1e-6)
    np.testing.assert_allclose(beta0, LOG2, atol=1e-5)  # the margin's scale vanishes


def test_orpo_is_finite_when_the_average_log_prob_is_near_or_at_zero():
    a = np.array([-1e-4, -1e-3, -0.5, -30.0])
    np.testing.assert_allclose(log_odds(jnp.asarray(a, jnp.float32)), np_log_odds(a), rtol=1e-4)
    for pi_c in ([0.0, -1e-7], [-1e-7, 0.0], [-3.0, -1e-9]):
        args = (
            np.array(pi_c),
            np.array([-2.0, 0.0]),
            np.zeros(2),
            np.zeros(2),
            np.ones(2),
            np.ones(2),
        )
        value, grads = _jax(ORPOLoss(None, lam=0.5), args)
        assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
    # at probability 1 the log-odds are capped (LOG_P_CAP = -1e-6): about -log(1e-6) = 13.8
    np.testing.assert_allclose(float(log_odds(jnp.zeros(()))), 13.8155, rtol=1e-3)


@pytest.fixture(scope="module")
def pairs_setup(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("dpo"), *PAIR_OVERRIDES)
    policy = init_params(cfg.model, jax.random.key(0))
    reference = init_params(cfg.model, jax.random.key(1))
    batch = case_pairs(tokenizer(), 4, seed=3, n_pad=1)
    pi, n = numpy_pair_logps(cfg, policy, batch)
    ref, _ = numpy_pair_logps(cfg, reference, batch)
    return (
        cfg,
        policy,
        reference,
        batch,
        (pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], n[:, 0], n[:, 1]),
    )


@pytest.mark.parametrize(
    ("loss", "reference"),
    [CASES[0], CASES[5], CASES[6]],
    ids=["dpo", "simpo", "orpo"],
)
def test_full_loss_on_a_tiny_model_equals_the_formula(pairs_setup, loss, reference):
    cfg, policy, ref_model, batch, logps = pairs_setup
    loss = dataclasses.replace(loss, model=cfg.model)
    check_batch_leaves(loss, batch)
    params, frozen = {MODEL: policy}, {REFERENCE: {MODEL: ref_model}} if loss.reference else {}
    out = jax.jit(lambda p, b: loss(p, frozen, b, None))(params, batch)
    real = batch["weight"] > 0  # the NumPy formulas see the real pairs only
    pi_c, pi_r, ref_c, ref_r, len_c, len_r = (x[real] for x in logps)
    if not loss.reference:  # reference-free: the formula sees zeros for ref_c, ref_r
        ref_c, ref_r = 0 * ref_c, 0 * ref_r
    want, _, (reward_c, reward_r) = reference(pi_c, pi_r, ref_c, ref_r, len_c, len_r)
    np.testing.assert_allclose(float(out.total), want.sum(), rtol=1e-4)
    assert float(out.weight) == 4.0  # the padding pair counts for nothing
    metrics = {k: float(v) for k, v in out.metrics.items()}
    np.testing.assert_allclose(metrics["logp/chosen"], pi_c.sum(), rtol=1e-4)
    np.testing.assert_allclose(metrics["logp/rejected"], pi_r.sum(), rtol=1e-4)
    # rewards and margins are differences of float32 sums of ~100-nat log-probs from two
    # compiled forwards: absolute float32 rounding at that scale, not relative to the difference
    atol = 2e-5
    np.testing.assert_allclose(metrics["rewards/chosen"], reward_c.sum(), rtol=1e-4, atol=atol)
    np.testing.assert_allclose(metrics["margin"], (reward_c - reward_r).sum(), rtol=1e-4, atol=atol)
    assert metrics["accuracy"] == (reward_c > reward_r).sum()
    if loss.reference:
        kl = (pi_c - ref_c) / len_c
        np.testing.assert_allclose(metrics["kl"], kl.sum(), rtol=1e-4, atol=atol)
    else:
        assert "kl" not in out.metrics
    grads = jax.jit(jax.grad(lambda p: loss(p, frozen, batch, None).total))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))  # padding pair: no NaN


@pytest.mark.parametrize("peft", [[], ["peft.method=lora", "peft.rank=2"]], ids=["full", "lora"])
def test_dpo_with_the_policy_equal_to_the_reference_is_log2(tmp_path, peft):
    cfg = tiny_config(tmp_path, *PAIR_OVERRIDES, "loss.name=dpo", *peft)
    loss = make_loss(cfg)
    trainable = run_trainable(cfg, loss)
    assert trainable.reference
    model = init_params(cfg.model, jax.random.key(0))
    split = trainable.split(model, logical_axes(cfg.model), key=jax.random.key(1))
    batch = case_pairs(tokenizer(), 4, seed=5)
    out = jax.jit(lambda p, f: loss(p, f, batch, None))(split.params, split.frozen)
    np.testing.assert_allclose(float(out.total) / float(out.weight), LOG2, rtol=1e-6)
    assert float(out.metrics["margin"]) == 0.0 and float(out.metrics["accuracy"]) == 0.0
    if not peft:
        return
    # LoRA: the reference is the base with the adapter off, whatever the adapter holds
    assert MODEL not in split.frozen[REFERENCE]
    moved = jax.tree.map(lambda x: x + 0.05, split.params)
    lp = jax.jit(lambda p, f: score_pairs(cfg.model, p, f, batch, None, True))(moved, split.frozen)
    base, _ = numpy_pair_logps(cfg, model, batch)
    np.testing.assert_allclose(np.asarray(lp.ref_c), base[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(lp.ref_r), base[:, 1], rtol=1e-5)
    assert np.max(np.abs(np.asarray(lp.pi_c) - base[:, 0])) > 1e-3  # the policy moved


@pytest.mark.parametrize(
    ("name", "cls", "fields"),
    [
        ("dpo", DPOLoss, {"beta": 0.3}),
        ("cdpo", CDPOLoss, {"beta": 0.2, "label_smoothing": 0.25}),
        ("ipo", IPOLoss, {"beta": 0.4}),
        ("simpo", SimPOLoss, {"beta": 2.5, "gamma": 0.5}),
        ("orpo", ORPOLoss, {"lam": 0.2}),
        ("kto", KTOLoss, {"beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.5}),
    ],
)
def test_the_registry_builds_each_loss_from_its_config(name, cls, fields):
    cfg = load_config(None, [f"loss.name={name}", *(f"loss.{k}={v}" for k, v in fields.items())])
    loss = make_loss(cfg)
    assert type(loss) is cls and loss.name == name
    assert {k: getattr(loss, k) for k in fields} == fields
    assert loss.reference == (name not in ("simpo", "orpo"))
    assert Trainable().reference is False  # the default run keeps none

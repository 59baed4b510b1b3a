"""KTO (llm/train/losses/kto.py) against the paper's formula (Ethayarajh et al. 2024, eq. 8).

The NumPy reference: z0 = max(0, mean over real mismatched rows of pi' - ref'); desirable
lam_D (1 - sigmoid(beta (r - z0))), undesirable lam_U (1 - sigmoid(beta (z0 - r))). Its
gradient with respect to pi (z0 held fixed: the paper stops its gradient) is derived by hand:
d/dx (1 - sigmoid(x)) = -sigmoid(x) (1 - sigmoid(x)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from preference_fixtures import PAIR_OVERRIDES, kto_batch, numpy_pair_logps, tokenizer
from train_fixtures import tiny_config

from llm.model import init_params
from llm.train.losses import KTOLoss, check_batch_leaves
from llm.train.trainable import MODEL, REFERENCE


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_kto(pi, ref, pi_kl, ref_kl, label, weight, beta, lam_d, lam_u):
    """(loss [B], d loss / d pi [B], z0) in float64."""
    z0 = max(0.0, float(((pi_kl - ref_kl) * weight).sum() / weight.sum()))
    r = pi - ref
    s_good, s_bad = sig(beta * (r - z0)), sig(beta * (z0 - r))
    loss = np.where(label == 1, lam_d * (1 - s_good), lam_u * (1 - s_bad))
    grad = np.where(
        label == 1, -lam_d * beta * s_good * (1 - s_good), lam_u * beta * s_bad * (1 - s_bad)
    )
    return loss, grad, z0


def _args(seed, B=8, kl_shift=0.0):
    rng = np.random.default_rng(seed)
    pi, ref = rng.uniform(-60, -5, B), rng.uniform(-60, -5, B)
    pi_kl, ref_kl = rng.uniform(-80, -10, B), rng.uniform(-80, -10, B)
    label = (rng.random(B) < 0.5).astype(float)
    weight = np.ones(B)
    weight[-1] = 0.0  # a padding example: out of the loss and of z0's mean
    return pi, ref, pi_kl + kl_shift, ref_kl, label, weight


@pytest.mark.parametrize(
    ("beta", "lam_d", "lam_u", "kl_shift"),
    [(0.1, 1.0, 1.0, 30.0), (0.5, 1.33, 0.7, 30.0), (0.1, 1.0, 1.0, -30.0)],
    ids=["plain", "weighted", "negative_kl_clamped"],
)
def test_kto_equals_the_papers_formula_values_and_gradients(beta, lam_d, lam_u, kl_shift):
    loss = KTOLoss(None, beta, lam_d, lam_u)
    for seed in range(3):
        args = _args(seed, kl_shift=kl_shift)
        want, want_grad, want_z0 = ref_kto(*args, beta, lam_d, lam_u)
        x = [jnp.asarray(a, jnp.float32) for a in args]
        value, z0 = loss.terms(*x)
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(z0), want_z0, rtol=1e-5, atol=1e-6)
        if kl_shift < 0:
            assert float(z0) == 0.0  # the mean log-ratio is negative: clamped at 0
        grads = jax.grad(lambda *a: jnp.sum(loss.terms(*a)[0] * a[5]), argnums=(0, 1, 2, 3))(*x)
        np.testing.assert_allclose(grads[0], want_grad * args[5], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(grads[1], -want_grad * args[5], rtol=1e-4, atol=1e-7)
        assert not np.any(grads[2]) and not np.any(grads[3])  # z0 carries no gradient


def test_policy_equal_to_reference_and_extreme_betas():
    B = 6
    same = np.full(B, -20.0)
    label, weight = np.array([1.0, 0, 1, 0, 1, 0]), np.ones(B)
    value, z0 = KTOLoss(None, 0.1, 2.0, 0.5).terms(*map(jnp.asarray, (same,) * 4), label, weight)
    np.testing.assert_allclose(value, np.where(label == 1, 2.0, 0.5) * 0.5)  # lam (1 - 1/2)
    assert float(z0) == 0.0
    args = [jnp.asarray(a, jnp.float32) for a in _args(4, kl_shift=5.0)]
    for beta in (1e-8, 1e4):
        loss = KTOLoss(None, beta)
        value, _ = loss.terms(*args)
        grad = jax.grad(lambda p, k=loss: jnp.sum(k.terms(p, *args[1:])[0]))(args[0])
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    value, _ = KTOLoss(None, 1e-8).terms(*args)
    np.testing.assert_allclose(value, 0.5, atol=1e-5)  # beta -> 0: sigmoid(0) everywhere


def test_full_kto_loss_on_a_tiny_model_equals_the_formula(tmp_path):
    cfg = tiny_config(tmp_path, *PAIR_OVERRIDES)
    policy = init_params(cfg.model, jax.random.key(0))
    reference = init_params(cfg.model, jax.random.key(1))
    batch = kto_batch(tokenizer(), 6, seed=2, n_pad=2)
    loss = KTOLoss(cfg.model, beta=0.1, desirable_weight=1.2, undesirable_weight=0.8)
    check_batch_leaves(loss, batch)
    params, frozen = {MODEL: policy}, {REFERENCE: {MODEL: reference}}
    out = jax.jit(lambda p, b: loss(p, frozen, b, None))(params, batch)
    pi, n = numpy_pair_logps(cfg, policy, batch)
    ref, _ = numpy_pair_logps(cfg, reference, batch)
    w, label = batch["weight"], batch["label"]
    want, _, z0 = ref_kto(pi[:, 0], ref[:, 0], pi[:, 1], ref[:, 1], label, w, 0.1, 1.2, 0.8)
    np.testing.assert_allclose(float(out.total), (want * w).sum(), rtol=1e-4)
    assert float(out.weight) == 6.0
    m = {k: float(v) / 6.0 for k, v in out.metrics.items()}  # as the step divides them
    np.testing.assert_allclose(m["z0"], z0, rtol=1e-4, atol=1e-6)
    derived = loss.derived_metrics(m)
    r = pi[:, 0] - ref[:, 0]
    good, bad = (label == 1) & (w > 0), (label == 0) & (w > 0)
    np.testing.assert_allclose(derived["rewards/chosen"], 0.1 * r[good].mean(), rtol=1e-4)
    np.testing.assert_allclose(derived["rewards/rejected"], 0.1 * r[bad].mean(), rtol=1e-4)
    margin = 0.1 * (r[good].mean() - r[bad].mean())  # a difference of float32 sums of
    np.testing.assert_allclose(derived["margin"], margin, atol=1e-5)  # ~300-nat log-probs
    np.testing.assert_allclose(derived["kl"], (r / n[:, 0])[good].mean(), rtol=1e-4)
    right = (good & (r > z0)) | (bad & (r < z0))
    np.testing.assert_allclose(m["accuracy"], right.sum() / 6.0, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: loss(p, frozen, batch, None).total))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_derived_metrics_leave_out_a_side_with_no_examples():
    loss = KTOLoss(None)
    m = {"desirable": 1.0, "sum/rewards_desirable": 0.3, "sum/rewards_undesirable": 0.0}
    m["sum/kl_desirable"] = 0.2
    assert loss.derived_metrics(m) == {"rewards/chosen": 0.3, "kl": 0.2}

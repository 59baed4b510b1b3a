"""The reward-model loss (llm/train/losses/reward.py): Bradley-Terry on a scalar head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reward_fixtures import pair_batch, toy_records

from llm.model import forward, init_params
from llm.tokenizers import load_tokenizer
from llm.train.losses import make_loss
from llm.train.losses.reward import HEAD, RewardLoss, bradley_terry, pair_margin, rewards
from llm.train.trainable import MODEL

L = 64  # a toy pair side renders to 49-60 byte tokens
RM = ["loss.name=reward", "model.max_seq_len=64", f"train.seq_len={L}"]


def _np_terms(r_c, r_r, m, c):
    """The formula in NumPy: -log sigmoid(r_c - r_r - m) + c (r_c + r_r)^2 (log1p form)."""
    z = r_c - r_r - m
    bt = np.log1p(np.exp(-z))
    return bt + c * (r_c + r_r) ** 2, bt


def test_bradley_terry_equals_the_numpy_formula_and_its_gradient():
    r_c = np.array([0.3, -1.2, 2.0, 0.0, 5.0], np.float32)
    r_r = np.array([-0.4, 0.7, 2.0, 0.0, -5.0], np.float32)
    m = np.array([0.0, 0.5, 0.0, 1.0, 0.25], np.float32)
    c = 0.01
    terms = bradley_terry(jnp.asarray(r_c), jnp.asarray(r_r), jnp.asarray(m), c)
    want, bt = _np_terms(r_c.astype(np.float64), r_r, m, c)
    np.testing.assert_allclose(terms["loss"], want, rtol=1e-6)
    np.testing.assert_allclose(terms["bt"], bt, rtol=1e-6)
    np.testing.assert_array_equal(terms["win"], [1, 0, 0.5, 0.5, 1])  # a tie counts half
    # equal rewards, no margin: log 2 (the zero head's loss at step 0)
    np.testing.assert_allclose(terms["bt"][2], np.log(2), rtol=1e-7)
    # d/dr_c = -sigmoid(-(r_c - r_r - m)) + 2c(r_c + r_r); d/dr_r = +sigmoid(...) + 2c(...)
    grad_c, grad_r = jax.grad(
        lambda a, b: jnp.sum(bradley_terry(a, b, jnp.asarray(m), c)["loss"]), argnums=(0, 1)
    )(jnp.asarray(r_c), jnp.asarray(r_r))
    sig = 1 / (1 + np.exp(r_c - r_r - m))
    np.testing.assert_allclose(grad_c, -sig + 2 * c * (r_c + r_r), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_r, sig + 2 * c * (r_c + r_r), rtol=1e-5, atol=1e-7)


def test_margin_is_the_larger_of_the_config_floor_and_the_record():
    got = pair_margin(0.5, jnp.asarray([0.0, np.nan, 1.0, 0.25], jnp.float32))
    np.testing.assert_array_equal(got, [0.5, 0.5, 1.0, 0.5])
    np.testing.assert_array_equal(pair_margin(0.0, jnp.asarray([np.nan, 2.0])), [0.0, 2.0])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


def _setup(tiny, tok, n=6, **head):
    cfg = tiny(*RM)
    loss = make_loss(cfg)
    params = {MODEL: init_params(cfg.model, jax.random.key(0))}
    d = cfg.model.d_model
    rng = np.random.default_rng(1)
    params[HEAD] = {
        "w": jnp.asarray(head.get("w", rng.normal(size=d)), jnp.float32),
        "b": jnp.asarray(head.get("b", 0.3), jnp.float32),
    }
    batch = {k: jnp.asarray(v) for k, v in pair_batch(tok, toy_records(n), L).items()}
    return cfg, loss, params, batch


def test_reward_is_the_head_on_the_last_real_token_of_a_plain_forward(tiny, tok):
    cfg, _, params, batch = _setup(tiny, tok)
    score = jax.jit(rewards, static_argnums=0)
    got = score(cfg.model, params, {}, batch)
    assert got.shape == (6, 2)
    inputs = batch["inputs"].reshape(12, L)
    seg = batch["segment_ids"].reshape(12, L)
    out = forward(cfg.model, params[MODEL], inputs, positions_BL=batch["positions"].reshape(12, L),
                  segment_ids_BL=seg, return_logits=False)  # fmt: skip
    last = np.asarray(seg).sum(-1) - 1
    h = np.asarray(out.hidden_BLD)[np.arange(12), last]
    want = h @ np.asarray(params[HEAD]["w"]) + 0.3
    np.testing.assert_allclose(np.asarray(got).reshape(12), want, rtol=1e-5, atol=1e-6)
    # padding after the last real token does not change a reward (right padding)
    padded = dict(batch, inputs=jnp.where(batch["segment_ids"] > 0, batch["inputs"], 7))
    np.testing.assert_allclose(score(cfg.model, params, {}, padded), got, rtol=1e-6)


def test_loss_sums_the_per_pair_formula_with_weights(tiny, tok):
    cfg, _, params, batch = _setup(tiny, tok)
    loss = RewardLoss(cfg.model, margin=0.2, center_coef=0.05)
    batch = dict(batch, weight=jnp.asarray([1, 1, 0, 1, 1, 0], jnp.float32),
                 margin=jnp.asarray([0, 1.5, 0, np.nan, 0.1, 0], jnp.float32))  # fmt: skip
    out = loss(params, {}, batch, None)
    r = np.asarray(rewards(cfg.model, params, {}, batch), np.float64)
    m = np.array([0.2, 1.5, 0.2, 0.2, 0.2, 0.2])
    w = np.array([1, 1, 0, 1, 1, 0.0])
    per, bt = _np_terms(r[:, 0], r[:, 1], m, 0.05)
    assert float(out.weight) == 4
    np.testing.assert_allclose(float(out.total), np.sum(per * w), rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["bt"]), np.sum(bt * w), rtol=1e-5)
    win = (r[:, 0] > r[:, 1]) + 0.5 * (r[:, 0] == r[:, 1])
    np.testing.assert_allclose(float(out.metrics["accuracy"]), np.sum(win * w), rtol=1e-6)
    np.testing.assert_allclose(
        float(out.metrics["reward_margin"]), np.sum((r[:, 0] - r[:, 1]) * w), rtol=1e-4, atol=1e-6
    )


def test_zero_head_gives_log_2_and_half_accuracy(tiny, tok):
    cfg, loss, params, batch = _setup(tiny, tok, w=np.zeros(32), b=0.0)
    out = loss(params, {}, batch, None)
    np.testing.assert_allclose(float(out.total) / float(out.weight), np.log(2), rtol=1e-6)
    assert float(out.metrics["accuracy"]) / float(out.weight) == 0.5
    head = loss.components(cfg.model)[HEAD].build(jax.random.key(0))
    assert head["w"].shape == (32,) and head["b"].shape == () and not np.any(head["w"])

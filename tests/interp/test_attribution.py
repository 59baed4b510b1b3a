"""Integrated gradients: completeness (attributions sum to f(x) - f(x')), the quadrature's
convergence, causality, and input checks. One chunk size (16) serves every `steps`, so the
path gradient compiles once per model here (plus once for the chunking test)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config import ModelConfig
from llm.interp.attribution import integrated_gradients, quadrature
from llm.model import forward, init_params

CFG = ModelConfig(
    vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32, init_std=0.1
)
STRIDE = 7  # the trained model's task: each token is the previous one plus 7, mod 61


def _stride_batch(key, batch=16, length=13):
    start_B1 = jax.random.randint(key, (batch, 1), 0, CFG.vocab_size)
    return (start_B1 + STRIDE * jnp.arange(length)) % CFG.vocab_size


def _loss(params, tokens_BL):
    logits_BLV = forward(CFG, params, tokens_BL[:, :-1]).logits_BLV
    logp_BLV = jax.nn.log_softmax(logits_BLV)
    return -jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1).mean()


@jax.jit
def _train(params):
    """150 Adam steps: the model learns the stride and becomes confident (loss ~ 1e-3)."""
    opt = optax.adam(3e-2)

    def step(carry, key):
        params, state = carry
        loss, grads = jax.value_and_grad(_loss)(params, _stride_batch(key))
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    keys = jax.random.split(jax.random.key(1), 150)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), keys)
    return params, losses


@pytest.fixture(scope="module")
def random_params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def trained_params(random_params):
    params, losses = _train(random_params)
    assert losses[0] > 3.0 and losses[-1] < 0.01  # it did learn: the test is not vacuous
    return params


@pytest.fixture(scope="module")
def tokens_BL():
    return jax.random.randint(jax.random.key(7), (2, 12), 0, CFG.vocab_size)


def test_completeness_on_a_random_model(random_params, tokens_BL):
    a = integrated_gradients(CFG, random_params, tokens_BL, steps=64)
    assert a.scores_BLD.shape == (2, 12, 32) and a.per_token_BL.shape == (2, 12)
    total_B = a.scores_BLD.astype(np.float64).sum(axis=(1, 2))
    np.testing.assert_allclose(total_B, a.delta_B, rtol=0.01)
    assert np.all(a.completeness_error_B < 0.01)
    np.testing.assert_allclose(a.per_token_BL.sum(axis=1), total_B, rtol=1e-5)


def test_completeness_on_a_trained_model_and_error_falls_with_steps(trained_params):
    tokens_BL = _stride_batch(jax.random.key(9))[:2, :12]
    with pytest.warns(UserWarning, match="miss completeness"):
        coarse = integrated_gradients(CFG, trained_params, tokens_BL, steps=8)
    fine = integrated_gradients(CFG, trained_params, tokens_BL, steps=64)
    # f is the forward's own log-probability (the trained norms' scales are not 1)
    logp_BV = jax.nn.log_softmax(forward(CFG, trained_params, tokens_BL).logits_BLV[:, -1])
    np.testing.assert_allclose(fine.logprob_B, logp_BV[np.arange(2), fine.target_B], rtol=1e-5)
    # the model predicts the stride's next token, and confidently
    np.testing.assert_array_equal(fine.target_B, (tokens_BL[:, -1] + STRIDE) % CFG.vocab_size)
    assert np.all(fine.logprob_B > -0.01) and np.all(fine.delta_B > 1.0)
    total_B = fine.scores_BLD.astype(np.float64).sum(axis=(1, 2))
    np.testing.assert_allclose(total_B, fine.delta_B, rtol=0.01)
    # the confident model's path is curved: 8 nodes miss by > 1%, 64 nodes by far less
    assert np.all(coarse.completeness_error_B > 0.01)
    assert np.all(fine.completeness_error_B < coarse.completeness_error_B / 100)


def test_gauss_legendre_beats_riemann_and_trapezoid_at_equal_steps(trained_params):
    """Why Gauss-Legendre is the default: same 64 gradient evaluations, smaller error."""
    tokens_BL = _stride_batch(jax.random.key(9))[:2, :12]
    with pytest.warns(UserWarning, match="miss completeness"):  # riemann does, at 64 steps
        errors = {
            rule: integrated_gradients(CFG, trained_params, tokens_BL, steps=64, rule=rule)
            for rule in ("gauss-legendre", "trapezoid", "riemann")
        }
    gauss = errors["gauss-legendre"].completeness_error_B
    for rule in ("trapezoid", "riemann"):
        assert np.all(gauss < errors[rule].completeness_error_B), rule


def test_riemann_error_falls_as_one_over_steps(random_params, tokens_BL):
    """The paper's right Riemann sum is first order: 8x the steps, about 1/8 the error."""
    with pytest.warns(UserWarning, match="miss completeness"):
        e8 = integrated_gradients(CFG, random_params, tokens_BL, steps=8, rule="riemann")
        e64 = integrated_gradients(CFG, random_params, tokens_BL, steps=64, rule="riemann")
    ratio_B = e8.completeness_error_B / e64.completeness_error_B
    assert np.all((ratio_B > 5) & (ratio_B < 11)), ratio_B


def test_chunking_does_not_change_the_integral(random_params, tokens_BL):
    """8 nodes in chunks of 3 (3 + 3 + 2 padded with a zero-weight node) = one chunk of 16."""
    whole = integrated_gradients(CFG, random_params, tokens_BL, steps=8)
    chunked = integrated_gradients(CFG, random_params, tokens_BL, steps=8, batch_steps=3)
    np.testing.assert_allclose(chunked.scores_BLD, whole.scores_BLD, rtol=1e-5, atol=1e-7)


def test_tokens_after_the_position_get_no_attribution(random_params, tokens_BL):
    """Causality: the prediction at position 5 cannot depend on tokens 6 and later."""
    a = integrated_gradients(CFG, random_params, tokens_BL, position=5, target=3, steps=16)
    assert np.all(a.scores_BLD[:, 6:] == 0)
    assert np.all(np.abs(a.per_token_BL[:, :6]).sum(axis=1) > 0)
    np.testing.assert_array_equal(a.target_B, [3, 3])
    np.testing.assert_allclose(a.scores_BLD.sum(axis=(1, 2)), a.delta_B, rtol=0.01)


def test_a_given_target_and_baseline(random_params, tokens_BL):
    """The default target is the top token; a baseline that differs from the input in the
    last token only puts all of f(x) - f(x') on that token."""
    default = integrated_gradients(CFG, random_params, tokens_BL, steps=16)
    given = integrated_gradients(CFG, random_params, tokens_BL, steps=16, target=default.target_B)
    np.testing.assert_array_equal(given.scores_BLD, default.scores_BLD)
    x_BLD = np.asarray(random_params["token_embed"])[np.asarray(tokens_BL)]
    baseline_BLD = x_BLD.copy()
    baseline_BLD[:, -1] = 0  # only the last token is "removed"
    a = integrated_gradients(CFG, random_params, tokens_BL, steps=16, baseline=baseline_BLD)
    assert np.all(a.scores_BLD[:, :-1] == 0)
    np.testing.assert_allclose(a.per_token_BL[:, -1], a.delta_B, rtol=0.01)


def test_zero_baseline_is_degenerate_without_additive_positions_a_token_one_is_not():
    """RoPE + RMSNorm, no biases (the Llama / SmolLM2 recipe): zero embeddings give the
    uniform distribution and f jumps within a < 1e-6 of them, so no step count reaches
    completeness; a token baseline (id 0 in every position) does at 64 steps."""
    cfg = dataclasses.replace(CFG, pos_encoding="rope", norm="rmsnorm")
    params = init_params(cfg, jax.random.key(0))
    tokens_BL = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    with pytest.warns(UserWarning, match="use a token id as `baseline`"):
        zero = integrated_gradients(cfg, params, tokens_BL, steps=64)
    np.testing.assert_allclose(zero.logprob_B - zero.delta_B, -np.log(cfg.vocab_size), rtol=1e-6)
    assert np.all(zero.completeness_error_B > 0.1)
    token = integrated_gradients(cfg, params, tokens_BL, steps=64, baseline=0)
    assert np.all(token.completeness_error_B < 0.01)
    x0_LD = np.tile(np.asarray(params["token_embed"])[0], (10, 1))
    explicit = integrated_gradients(cfg, params, tokens_BL, steps=64, baseline=x0_LD)
    np.testing.assert_array_equal(explicit.scores_BLD, token.scores_BLD)


def test_quadrature_rules_integrate_polynomials():
    """Weights sum to one; Gauss-Legendre with m nodes is exact to degree 2m - 1."""
    for rule in ("gauss-legendre", "trapezoid", "riemann"):
        nodes, weights = quadrature(rule, 5)
        assert np.all((nodes >= 0) & (nodes <= 1)) and np.isclose(weights.sum(), 1.0)
    nodes, weights = quadrature("gauss-legendre", 4)
    np.testing.assert_allclose(weights @ nodes**7, 1 / 8, rtol=1e-12)
    nodes, weights = quadrature("trapezoid", 3)
    np.testing.assert_allclose(nodes, [0, 0.5, 1])
    np.testing.assert_allclose(weights, [0.25, 0.5, 0.25])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"position": 12}, "position=12"),
        ({"target": 61}, "target ids"),
        ({"target": [1, 2, 3]}, "target must be"),
        ({"steps": 0}, "steps=0"),
        ({"rule": "simpson"}, "rule='simpson'"),
        ({"batch_steps": 0}, "batch_steps=0"),
        ({"baseline": np.zeros((3, 32))}, "baseline has shape"),
        ({"baseline": 61}, "baseline"),
    ],
)
def test_bad_arguments_are_named(random_params, tokens_BL, kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrated_gradients(CFG, random_params, tokens_BL, **kwargs)


def test_bad_tokens_and_config_are_named(random_params):
    with pytest.raises(ValueError, match="outside"):
        integrated_gradients(CFG, random_params, jnp.full((1, 4), 61))
    with pytest.raises(ValueError, match="integer ids"):
        integrated_gradients(CFG, random_params, jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match=r"ModelConfig \(cfg.model\)"):
        integrated_gradients({"model": CFG}, random_params, jnp.zeros((1, 4), jnp.int32))

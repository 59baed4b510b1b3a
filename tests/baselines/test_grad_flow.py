"""The vanishing / exploding gradient lesson (llm/baselines/grad_flow.py): the slopes the theory
predicts, a bound that always holds, and the norms equal to those jax.grad gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.baselines import backprop as bp
from llm.baselines import grad_flow as gf

# Inputs of 1e-12 keep every |h_t| below ~1e-9 for 30 steps even at rho = 1.5 (1.5^30 ~ 2e5), so
# tanh'(a_t) = 1 - h_t^2 = 1 to double precision: the linearised regime.
LINEAR = gf.GradFlowConfig(hidden=16, steps=30, input_scale=1e-12, seed=1)
UNIT = gf.GradFlowConfig(hidden=16, steps=30, input_scale=1.0, seed=2)


def test_linearised_norms_are_radius_to_the_steps_back():
    """Linearised, dL/dh_t = g (W^T)^(T - t); W = rho Q with Q orthogonal keeps every singular
    value at rho, so ||dL/dh_t|| = rho^(T - t) exactly (||g|| = 1): ln-norm is linear in the
    steps back with slope ln rho, negative (vanishing) for rho < 1, positive (exploding) for
    rho > 1, and the slopes against ln rho fall on the identity line."""
    radii = np.array([0.5, 0.8, 1.0, 1.2, 1.5])
    slopes = []
    for rho in radii:
        norms_T = gf.rnn_grad_norms(rho, LINEAR)
        steps_back = np.arange(LINEAR.steps)[::-1]
        np.testing.assert_allclose(norms_T, rho**steps_back, rtol=1e-9)
        slopes.append(gf.log_slope(norms_T))
    fit = np.polyfit(np.log(radii), slopes, 1)
    np.testing.assert_allclose(fit, [1.0, 0.0], atol=1e-9)
    assert slopes[0] < 0 < slopes[-1] and abs(slopes[2]) < 1e-9


def test_saturating_tanh_only_shrinks_the_gradient():
    """||diag(tanh') W^T|| <= rho because 0 < tanh' <= 1: at unit inputs every norm stays at or
    under the linear prediction rho^(T - t), and strictly under it once tanh saturates."""
    steps_back = np.arange(UNIT.steps)[::-1]
    for rho in gf.RADII:
        norms_T = gf.rnn_grad_norms(rho, UNIT)
        bound_T = rho**steps_back
        assert (norms_T <= bound_T * (1 + 1e-12)).all()
        assert norms_T[0] < 0.5 * bound_T[0]


def test_larger_forget_bias_carries_the_gradient_further():
    """Along the cell path dL/dc_{t-1} = dL/dc_t * f_t with f ~ sigmoid(b_f): a larger forget bias
    decays more slowly, and at b_f = 3 the LSTM keeps far more than the tanh RNN at rho = 1."""
    flows = gf.grad_flow(UNIT, radii=(1.0,), forget_biases=(0.0, 1.0, 3.0))
    slopes = [gf.log_slope(flows[f"lstm b_f={b:g}"]) for b in (0.0, 1.0, 3.0)]
    assert slopes[0] < slopes[1] < slopes[2]
    assert flows["lstm b_f=3"][0] > 1e3 * flows["rnn rho=1"][0]


def jax_rnn_norms(u_1LH, W_HH, g_1H):
    """dL/dh_t by jax.grad: add a zero perturbation delta_t to each h_t; dL/d delta_t = dL/dh_t."""

    def loss(delta_L1H):
        def step(h_1H, xs):
            u_1H, d_1H = xs
            h_1H = jnp.tanh(u_1H + h_1H @ W_HH) + d_1H
            return h_1H, None

        h_1H, _ = jax.lax.scan(step, jnp.zeros_like(g_1H), (u_1LH.swapaxes(0, 1), delta_L1H))
        return (h_1H * g_1H).sum()

    with jax.enable_x64(True):
        d_L1H = jax.grad(loss)(jnp.zeros(u_1LH.swapaxes(0, 1).shape, jnp.float64))
        return np.linalg.norm(np.asarray(d_L1H)[:, 0], axis=-1)


def jax_lstm_norms(u_1LG, W_HG, b_G, g_1H):
    def loss(dh_L1H, dc_L1H):
        def step(carry, xs):
            (h, c), (u, dh, dc) = carry, xs
            i, f, g, o = jnp.split(u + h @ W_HG + b_G, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h + dh, c + dc), None

        zeros = jnp.zeros_like(g_1H)
        (h, _), _ = jax.lax.scan(step, (zeros, zeros), (u_1LG.swapaxes(0, 1), dh_L1H, dc_L1H))
        return (h * g_1H).sum()

    with jax.enable_x64(True):
        zeros = jnp.zeros((u_1LG.shape[1], 1, g_1H.shape[1]), jnp.float64)
        dh, dc = jax.grad(loss, argnums=(0, 1))(zeros, zeros)
        return np.sqrt((np.asarray(dh)[:, 0] ** 2).sum(-1) + (np.asarray(dc)[:, 0] ** 2).sum(-1))


@pytest.mark.parametrize("rho", gf.RADII)
def test_rnn_norms_equal_jax_grad(rho):
    np.testing.assert_allclose(
        gf.rnn_grad_norms(rho, UNIT), jax_rnn_norms(*gf.rnn_problem(rho, UNIT)), rtol=1e-6
    )


def test_lstm_norms_equal_jax_grad():
    want = jax_lstm_norms(*gf.lstm_problem(1.0, UNIT, forget_bias=1.0))
    np.testing.assert_allclose(gf.lstm_grad_norms(1.0, UNIT, forget_bias=1.0), want, rtol=1e-6)


def test_mutation_without_tanh_derivative_differs_from_jax(monkeypatch):
    want = jax_rnn_norms(*gf.rnn_problem(0.5, UNIT))
    monkeypatch.setattr(bp, "tanh_backward", lambda dy, y: dy)
    got = gf.rnn_grad_norms(0.5, UNIT)
    assert np.abs(got / want - 1).max() > 1e-2


def test_table_rows_and_plot(tmp_path):
    flows = gf.grad_flow(UNIT, radii=(0.5, 1.5), forget_biases=(1.0,))
    lines = gf.norm_table(flows, every=10).splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == [30, 20, 10, 1]
    assert float(lines[-1].split()[1]) == pytest.approx(flows["rnn rho=0.5"][0], rel=1e-3)
    png = gf.plot_grad_flow({"unit inputs": flows}, tmp_path / "flow.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one panel"):
        gf.plot_grad_flow({}, tmp_path / "none.png")


def test_config_is_validated():
    with pytest.raises(ValueError, match="steps >= 2"):
        gf.GradFlowConfig(steps=1)
    with pytest.raises(ValueError, match="spectral radius"):
        gf.recurrent_weights(4, -1.0, np.random.default_rng(0))

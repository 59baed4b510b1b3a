"""Hand-written NumPy backprop (llm/baselines/backprop.py) against jax.grad and finite differences.

Every gradient is compared with jax.grad of the same function written independently in
jax.numpy (float64 through jax.enable_x64) at 1e-6 relative tolerance, and with central finite
differences in float64. Mutation tests swap one derivative out of the module and check that the
comparison then fails, so the checks can tell a right backward from a wrong one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llm.baselines import backprop as bp

RTOL = 1e-6


def assert_grads_close(got: dict, want: dict, rtol: float = RTOL) -> None:
    assert set(got) == set(want)
    for k in want:
        want_k = np.asarray(want[k])
        scale = max(np.abs(want_k).max(), 1e-12)
        err = np.abs(np.asarray(got[k]) - want_k).max() / scale
        assert err < rtol, f"{k}: relative error {err:.2e}"


def max_rel_error(got: dict, want: dict) -> float:
    return max(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max() for k in want)


def finite_diff(loss_fn, params: dict, eps: float = 1e-6) -> dict:
    """Central differences (f(p + eps) - f(p - eps)) / 2 eps, one coordinate at a time."""
    grads = {}
    for k, v in params.items():
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus = {**params, k: v.copy()}
            minus = {**params, k: v.copy()}
            plus[k][idx] += eps
            minus[k][idx] -= eps
            g[idx] = (loss_fn(plus) - loss_fn(minus)) / (2 * eps)
        grads[k] = g
    return grads


def jax_grad(loss_fn, params: dict) -> dict:
    with jax.enable_x64(True):
        params64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        return {k: np.asarray(v) for k, v in jax.grad(loss_fn)(params64).items()}


def jax_cross_entropy(logits_NV, targets_N):
    logp_NV = jax.nn.log_softmax(logits_NV, axis=-1)
    return -jnp.take_along_axis(logp_NV, targets_N[:, None], axis=1).mean()


# ---- MLP ----

JAX_ACT = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


def mlp_data(seed=0):
    """Biases drawn nonzero: a relu unit whose whole input row is zero would sit exactly on its
    kink, where finite differences read 1/2 and the subgradient 0."""
    rng = np.random.default_rng(seed)
    params = bp.mlp_init((3, 5, 4, 4), seed)
    for k in ("b0", "b1", "b2"):
        params[k] = 0.3 * rng.normal(size=params[k].shape)
    return rng.normal(size=(6, 3)), rng.integers(0, 4, size=6), params


def jax_mlp_loss(params, x_BI, y_B, act):
    h = jnp.asarray(x_BI)
    n = len(params) // 2
    for k in range(n):
        h = h @ params[f"W{k}"] + params[f"b{k}"]
        h = JAX_ACT[act](h) if k < n - 1 else h
    return jax_cross_entropy(h, jnp.asarray(y_B))


@pytest.mark.parametrize("act", bp.ACTIVATIONS)
def test_mlp_grads_equal_jax_grad_and_finite_differences(act):
    x, y, params = mlp_data()
    loss, grads = bp.mlp_loss_and_grads(params, x, y, act)
    with jax.enable_x64(True):
        want_loss = float(jax_mlp_loss({k: jnp.asarray(v) for k, v in params.items()}, x, y, act))
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_grads_close(grads, jax_grad(lambda p: jax_mlp_loss(p, x, y, act), params))
    fd = finite_diff(lambda p: bp.mlp_loss_and_grads(p, x, y, act)[0], params)
    assert_grads_close(grads, fd)


def test_mlp_mutation_wrong_activation_derivative_is_caught(monkeypatch):
    """Dropping sigma's derivative (passing dy straight through) must break the check."""
    x, y, params = mlp_data()
    want = jax_grad(lambda p: jax_mlp_loss(p, x, y, "sigmoid"), params)
    monkeypatch.setattr(bp, "sigmoid_backward", lambda dy, y: dy)
    _, grads = bp.mlp_loss_and_grads(params, x, y, "sigmoid")
    assert max_rel_error(grads, want) > 1e-2


def test_mlp_learns_xor():
    x_B2 = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y_B = np.array([0, 1, 1, 0])  # XOR: no linear model separates it (Minsky & Papert 1969)
    params = bp.mlp_init((2, 8, 2), seed=0)
    params, losses = bp.train_sgd(lambda p: bp.mlp_loss_and_grads(p, x_B2, y_B), params, 0.5, 2000)
    logits, _ = bp.mlp_forward(params, x_B2)
    assert (logits.argmax(axis=1) == y_B).all()
    assert losses[0] > 0.6 and losses[-1] < 0.05  # from ~ln 2 down to near zero


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation='gelu'"):
        bp.mlp_forward(bp.mlp_init((2, 2)), np.zeros((1, 2)), "gelu")


# ---- RNN language model, BPTT ----


def rnn_lm_data(seed=0, vocab=5, hidden=4, B=2, L=7):
    rng = np.random.default_rng(seed)
    inputs, targets = rng.integers(0, vocab, (B, L)), rng.integers(0, vocab, (B, L))
    return bp.rnn_lm_init(vocab, hidden, seed), inputs, targets, 0.5 * rng.normal(size=(B, hidden))


def jax_rnn_lm_loss(params, inputs_BL, targets_BL, h0_BH):
    def step(h_BH, u_BH):
        h_BH = jnp.tanh(u_BH + h_BH @ params["W_HH"] + params["b_H"])
        return h_BH, h_BH

    u_LBH = params["E_VH"][jnp.asarray(inputs_BL).T]
    _, h_LBH = jax.lax.scan(step, jnp.asarray(h0_BH), u_LBH)
    logits_LBV = h_LBH @ params["W_HV"] + params["b_V"]
    V = logits_LBV.shape[-1]
    return jax_cross_entropy(logits_LBV.reshape(-1, V), jnp.asarray(targets_BL).T.reshape(-1))


def test_rnn_lm_bptt_equals_jax_grad_and_finite_differences():
    params, x, y, h0 = rnn_lm_data()
    _, grads, _ = bp.rnn_lm_loss_and_grads(params, x, y, h0)
    assert_grads_close(grads, jax_grad(lambda p: jax_rnn_lm_loss(p, x, y, h0), params))
    fd = finite_diff(lambda p: bp.rnn_lm_loss_and_grads(p, x, y, h0)[0], params)
    assert_grads_close(grads, fd)


def test_rnn_mutation_no_tanh_derivative_is_caught(monkeypatch):
    params, x, y, h0 = rnn_lm_data()
    fd = finite_diff(lambda p: bp.rnn_lm_loss_and_grads(p, x, y, h0)[0], params)
    monkeypatch.setattr(bp, "tanh_backward", lambda dy, y: dy)
    assert max_rel_error(bp.rnn_lm_loss_and_grads(params, x, y, h0)[1], fd) > 1e-2


def test_rnn_mutation_truncated_to_one_step_is_caught(monkeypatch):
    """BPTT cut to a single step (no gradient carried to h_{t-1}) is not the true gradient."""
    params, x, y, h0 = rnn_lm_data()
    want = jax_grad(lambda p: jax_rnn_lm_loss(p, x, y, h0), params)
    step_backward = bp.rnn_step_backward

    def one_step(dh_next, cache):
        du, dh_prev, dW, db = step_backward(dh_next, cache)
        return du, np.zeros_like(dh_prev), dW, db

    monkeypatch.setattr(bp, "rnn_step_backward", one_step)
    _, grads, _ = bp.rnn_lm_loss_and_grads(params, x, y, h0)
    assert np.abs(grads["W_HH"] - want["W_HH"]).max() / np.abs(want["W_HH"]).max() > 1e-2
    assert_grads_close({"W_HV": grads["W_HV"]}, {"W_HV": want["W_HV"]})  # output layer unaffected


def test_carried_state_splits_a_sequence_into_windows():
    """Truncated BPTT's forward: two windows of 4 steps with h carried from the first into the
    second give the same mean loss as one window of 8 (the windows are of equal length)."""
    params, x, y, h0 = rnn_lm_data(L=8)
    whole, _, h_whole = bp.rnn_lm_loss_and_grads(params, x, y, h0)
    first, _, h_mid = bp.rnn_lm_loss_and_grads(params, x[:, :4], y[:, :4], h0)
    second, _, h_end = bp.rnn_lm_loss_and_grads(params, x[:, 4:], y[:, 4:], h_mid)
    assert (first + second) / 2 == pytest.approx(whole, rel=1e-12)
    np.testing.assert_allclose(h_end, h_whole, rtol=1e-12)
    restarted, _, _ = bp.rnn_lm_loss_and_grads(params, x[:, 4:], y[:, 4:], h0)
    assert restarted != pytest.approx(second, rel=1e-6)  # the carried state matters


def test_embedding_backward_equals_one_hot_matmul():
    rng = np.random.default_rng(0)
    tokens_BL = np.array([[1, 3, 1], [0, 1, 4]])  # token 1 read three times: its rows add up
    drows_BLH = rng.normal(size=(2, 3, 6))
    one_hot_NV = np.eye(5)[tokens_BL.reshape(-1)]
    want_VH = one_hot_NV.T @ drows_BLH.reshape(-1, 6)
    np.testing.assert_allclose(bp.embedding_backward(drows_BLH, tokens_BL, 5), want_VH, rtol=1e-14)


def test_rnn_lm_learns_a_periodic_sequence():
    seq = np.tile(np.arange(4), 9)  # 0 1 2 3 0 1 2 3 ...: each next token is determined
    x_BL, y_BL = seq[None, :-1], seq[None, 1:]
    params = bp.rnn_lm_init(vocab=4, hidden=8, seed=0)
    params, losses = bp.train_sgd(
        lambda p: bp.rnn_lm_loss_and_grads(p, x_BL, y_BL)[:2], params, lr=0.5, steps=300, clip=5.0
    )
    assert losses[0] > 1.0 and losses[-1] < 0.05  # from ~ln 4 = 1.39 to near zero


# ---- LSTM ----


def lstm_data(seed=0, B=2, L=5, H=3):
    rng = np.random.default_rng(seed)
    params = {
        "u_BLG": rng.normal(size=(B, L, 4 * H)),
        "W_HG": rng.normal(0, H**-0.5, (H, 4 * H)),
        "b_G": rng.normal(size=4 * H),
    }
    r_BLH, h0_BH, c0_BH = (
        rng.normal(size=(B, L, H)),
        0.5 * rng.normal(size=(B, H)),
        rng.normal(size=(B, H)),
    )
    return params, r_BLH, h0_BH, c0_BH


def np_lstm_loss(p, r_BLH, h0, c0):
    h_BLH, _ = bp.lstm_forward(p["u_BLG"], h0, c0, p["W_HG"], p["b_G"])
    return float((h_BLH * r_BLH).sum())


def jax_lstm_loss(p, r_BLH, h0, c0):
    def step(carry, u_BG):
        h, c = carry
        i, f, g, o = jnp.split(u_BG + h @ p["W_HG"] + p["b_G"], 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    _, h_LBH = jax.lax.scan(step, (jnp.asarray(h0), jnp.asarray(c0)), p["u_BLG"].swapaxes(0, 1))
    return (h_LBH.swapaxes(0, 1) * r_BLH).sum()


def lstm_grads(p, r_BLH, h0, c0):
    _, caches = bp.lstm_forward(p["u_BLG"], h0, c0, p["W_HG"], p["b_G"])
    du, dW, db, _, _ = bp.lstm_backward(r_BLH, caches)  # d(sum h * r)/dh_t = r_t
    return {"u_BLG": du, "W_HG": dW, "b_G": db}


def test_lstm_bptt_equals_jax_grad_and_finite_differences():
    p, r, h0, c0 = lstm_data()
    grads = lstm_grads(p, r, h0, c0)
    assert_grads_close(grads, jax_grad(lambda q: jax_lstm_loss(q, r, h0, c0), p))
    assert_grads_close(grads, finite_diff(lambda q: np_lstm_loss(q, r, h0, c0), p))


def test_lstm_mutation_no_forget_gate_on_carried_cell_gradient_is_caught(monkeypatch):
    p, r, h0, c0 = lstm_data()
    want = jax_grad(lambda q: jax_lstm_loss(q, r, h0, c0), p)
    step_backward = bp.lstm_step_backward

    def wrong(dh, dc, cache):  # dc_prev = dc (the cell path without its forget gate)
        du, dh_prev, _, dW, db = step_backward(dh, dc, cache)
        return du, dh_prev, dc + bp.tanh_backward(dh * cache[6], cache[7]), dW, db

    monkeypatch.setattr(bp, "lstm_step_backward", wrong)
    assert max_rel_error(lstm_grads(p, r, h0, c0), want) > 1e-2


def test_lstm_forward_equals_torch_lstm():
    """Gate order i, f, g, o and the cell equations match torch.nn.LSTM with copied weights."""
    torch.manual_seed(0)
    B, L, I, H = 2, 6, 3, 4
    lstm = torch.nn.LSTM(I, H, batch_first=True).double()
    x_BLI = torch.randn(B, L, I, dtype=torch.float64)
    h0, c0 = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    want_BLH, _ = lstm(x_BLI, (h0, c0))
    W_ih, W_hh, b_ih, b_hh = (t.detach().numpy() for t in lstm.parameters())
    u_BLG = x_BLI.numpy() @ W_ih.T + b_ih
    h_BLH, _ = bp.lstm_forward(u_BLG, h0[0].numpy(), c0[0].numpy(), W_hh.T, b_hh)
    np.testing.assert_allclose(h_BLH, want_BLH.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---- SGD ----


def test_sgd_clip_bounds_the_global_update_norm():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=3), "b": rng.normal(size=(2, 2))}
    grads = {"a": 10 * rng.normal(size=3), "b": 10 * rng.normal(size=(2, 2))}
    new = bp.sgd_step(params, grads, lr=0.1, clip=1.0)
    step_norm = np.sqrt(sum(((new[k] - params[k]) ** 2).sum() for k in params))
    assert step_norm == pytest.approx(0.1 * 1.0, rel=1e-12)  # the direction kept, norm lr * clip
    np.testing.assert_allclose(bp.sgd_step(params, grads, 0.1)["a"], params["a"] - grads["a"] / 10)
    with pytest.raises(ValueError, match="grads keys"):
        bp.sgd_step(params, {"a": grads["a"]}, lr=0.1)

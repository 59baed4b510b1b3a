"""Backpropagation written out by hand in NumPy: an MLP, a tanh RNN language model, an LSTM.

The teaching reference of the gradient lesson: every derivative the rest of the codebase leaves
to `jax.grad` is written here as a line of NumPy that a learner can read, and the tests check
each one against `jax.grad` and against central finite differences.

Design choices
- Every layer is a pair of functions written next to each other: `<layer>_forward(...)` returns
  its output and a cache holding exactly what the chain rule needs; `<layer>_backward(d_out,
  cache)` returns the gradient of the loss with respect to the layer's inputs and parameters.
  Backpropagation (Rumelhart, Hinton & Williams 1986, "Learning representations by
  back-propagating errors") is then the chain rule applied from the loss back to the input:
  each backward multiplies the incoming gradient by its layer's Jacobian (transposed).
- Backpropagation through time (Werbos 1990, "Backpropagation through time: what it does and
  how to do it"): the recurrence is unrolled over its L steps and the chain rule runs from step
  L back to 1. The gradient reaching h_t is the local term (from the output read at t) plus the
  gradient of h_{t+1} carried back through dh_{t+1}/dh_t; weights shared by all steps sum their
  per-step gradients. `rnn_backward` returns that total dL/dh_t for every t, which is what
  llm/baselines/grad_flow.py plots (the vanishing / exploding gradient lesson).
- LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers, Schmidhuber & Cummins
  2000), gates in torch.nn.LSTM's order i, f, g, o. The cell state c_t is carried back through
  the forget gate alone, which is why its gradient need not vanish.
- An embedding lookup E[token] equals a one-hot row times E; its backward is therefore
  one_hot^T @ d_rows, a scatter-add of the rows' gradients (`embedding_backward`).
- Float64 throughout, so a gradient check can reach 1e-6 relative error.
- Plain SGD, theta <- theta - lr * g, with optional clipping of the global gradient norm
  (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks").

Shapes: B batch, L steps, I input width, O output width of a linear layer, H hidden width,
G = 4H LSTM gate pre-activations, V vocabulary / classes, N = B*L rows of a flattened batch.
Parameters are plain dicts of arrays, so the same dict feeds the jax.numpy reference in tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

Params = dict[str, np.ndarray]
ACTIVATIONS = ("tanh", "relu", "sigmoid")


# ---- layers: each forward returns (output, cache); its backward sits right under it ----


def linear_forward(x_BI: np.ndarray, W_IO: np.ndarray, b_O: np.ndarray):
    """y = x W + b."""
    return x_BI @ W_IO + b_O, (x_BI, W_IO)


def linear_backward(dy_BO: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dy/dx = W^T, dy/dW = x^T, dy/db = 1: dx = dy W^T, dW = x^T dy, db = sum over rows of dy."""
    x_BI, W_IO = cache
    return dy_BO @ W_IO.T, x_BI.T @ dy_BO, dy_BO.sum(axis=0)


def tanh_forward(x: np.ndarray):
    y = np.tanh(x)
    return y, y


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """tanh'(x) = 1 - tanh(x)^2, read from the cached output."""
    return dy * (1.0 - y * y)


def sigmoid_forward(x: np.ndarray):
    y = np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e^-x) without overflow for large |x|
    return y, y


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sigma'(x) = sigma(x) (1 - sigma(x))."""
    return dy * y * (1.0 - y)


def relu_forward(x: np.ndarray):
    return np.maximum(x, 0.0), x > 0


def relu_backward(dy: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """relu'(x) = 1 where x > 0, else 0 (0 at x = 0, as jax.nn.relu)."""
    return dy * positive


def activation(name: str) -> tuple[Callable, Callable]:
    """The (forward, backward) pair of an activation, looked up when called (so a test can swap
    one out to see the gradient checks fail)."""
    if name == "tanh":
        return tanh_forward, tanh_backward
    if name == "relu":
        return relu_forward, relu_backward
    if name == "sigmoid":
        return sigmoid_forward, sigmoid_backward
    raise ValueError(f"activation={name!r} is not one of {ACTIVATIONS}")


def softmax_cross_entropy(logits_NV: np.ndarray, targets_N: np.ndarray):
    """Mean over N rows of -log softmax(logits)[target], and its gradient (p - onehot) / N."""
    if logits_NV.ndim != 2 or targets_N.shape != logits_NV.shape[:1]:
        raise ValueError(f"logits {logits_NV.shape} and targets {targets_N.shape}: want [N,V], [N]")
    shifted_NV = logits_NV - logits_NV.max(axis=1, keepdims=True)
    logp_NV = shifted_NV - np.log(np.exp(shifted_NV).sum(axis=1, keepdims=True))
    rows = np.arange(len(targets_N))
    loss = -logp_NV[rows, targets_N].mean()
    dlogits_NV = np.exp(logp_NV)
    dlogits_NV[rows, targets_N] -= 1.0
    return float(loss), dlogits_NV / len(targets_N)


def embedding_backward(drows_BLH: np.ndarray, tokens_BL: np.ndarray, vocab: int) -> np.ndarray:
    """E[tokens] = one_hot(tokens) @ E, so dE = one_hot^T @ drows: each token's row sums the
    gradients of every position that read it (np.add.at adds repeated indices)."""
    dE_VH = np.zeros((vocab, drows_BLH.shape[-1]))
    np.add.at(dE_VH, tokens_BL, drows_BLH)
    return dE_VH


# ---- a multilayer perceptron classifier ----


def mlp_init(sizes: tuple[int, ...], seed: int = 0) -> Params:
    """W{k}: [sizes[k], sizes[k+1]] drawn N(0, 1/fan_in) (LeCun 1998), b{k} zero."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes={sizes} needs an input and an output width, all >= 1")
    rng = np.random.default_rng(seed)
    params = {}
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"W{k}"] = rng.normal(0.0, n_in**-0.5, (n_in, n_out))
        params[f"b{k}"] = np.zeros(n_out)
    return params


def mlp_forward(params: Params, x_BI: np.ndarray, act: str = "tanh"):
    """Logits of linear -> act -> ... -> linear, and the caches of every layer."""
    forward, _ = activation(act)
    n_layers = len(params) // 2
    h, caches = x_BI, []
    for k in range(n_layers):
        h, lin_cache = linear_forward(h, params[f"W{k}"], params[f"b{k}"])
        act_cache = None
        if k < n_layers - 1:
            h, act_cache = forward(h)
        caches.append((lin_cache, act_cache))
    return h, caches


def mlp_backward(dlogits_BV: np.ndarray, caches, act: str = "tanh") -> Params:
    """The chain rule from the logits down: through each activation, then each linear layer."""
    _, backward = activation(act)
    grads, dh = {}, dlogits_BV
    for k in reversed(range(len(caches))):
        lin_cache, act_cache = caches[k]
        if act_cache is not None:
            dh = backward(dh, act_cache)
        dh, grads[f"W{k}"], grads[f"b{k}"] = linear_backward(dh, lin_cache)
    return grads


def mlp_loss_and_grads(params: Params, x_BI: np.ndarray, y_B: np.ndarray, act: str = "tanh"):
    """Mean cross-entropy of the classes y_B, and its gradient for every parameter."""
    logits_BV, caches = mlp_forward(params, x_BI, act)
    loss, dlogits_BV = softmax_cross_entropy(logits_BV, y_B)
    return loss, mlp_backward(dlogits_BV, caches, act)


# ---- a vanilla tanh RNN: h_t = tanh(u_t + h_{t-1} W + b) ----


def rnn_step_forward(u_BH: np.ndarray, h_BH: np.ndarray, W_HH: np.ndarray, b_H: np.ndarray):
    """One step; u_BH is the input's contribution to the pre-activation (E[token] or x W_in)."""
    h_next_BH, y_BH = tanh_forward(u_BH + h_BH @ W_HH + b_H)
    return h_next_BH, (h_BH, W_HH, y_BH)


def rnn_step_backward(dh_next_BH: np.ndarray, cache):
    """a = u + h W + b, h' = tanh(a): da = dh' (1 - h'^2); du = da, dh = da W^T, dW = h^T da."""
    h_BH, W_HH, y_BH = cache
    da_BH = tanh_backward(dh_next_BH, y_BH)
    return da_BH, da_BH @ W_HH.T, h_BH.T @ da_BH, da_BH.sum(axis=0)


def rnn_forward(u_BLH: np.ndarray, h0_BH: np.ndarray, W_HH: np.ndarray, b_H: np.ndarray):
    """Hidden states h_1..h_L [B, L, H] and one cache per step."""
    h_BH, caches, hs = h0_BH, [], []
    for t in range(u_BLH.shape[1]):
        h_BH, cache = rnn_step_forward(u_BLH[:, t], h_BH, W_HH, b_H)
        hs.append(h_BH)
        caches.append(cache)
    return np.stack(hs, axis=1), caches


def rnn_backward(dh_local_BLH: np.ndarray, caches):
    """BPTT. dh_local[:, t] is dL/dh_t through the output read at t only; the total is
    dL/dh_t = dh_local_t + dL/dh_{t+1} dh_{t+1}/dh_t, run from t = L down to 1.

    Returns du [B, L, H], dW_HH, db_H, the total dL/dh_t [B, L, H] and dL/dh_0 [B, H]."""
    du_BLH, dh_BLH = np.zeros_like(dh_local_BLH), np.zeros_like(dh_local_BLH)
    dW_HH, db_H = np.zeros_like(caches[0][1]), np.zeros(dh_local_BLH.shape[-1])
    dh_carry_BH = np.zeros_like(dh_local_BLH[:, 0])
    for t in reversed(range(len(caches))):
        dh_BLH[:, t] = dh_local_BLH[:, t] + dh_carry_BH
        du_BLH[:, t], dh_carry_BH, dW_t, db_t = rnn_step_backward(dh_BLH[:, t], caches[t])
        dW_HH += dW_t  # W is shared by every step: its gradient is the sum over steps
        db_H += db_t
    return du_BLH, dW_HH, db_H, dh_BLH, dh_carry_BH


def rnn_lm_init(vocab: int, hidden: int, seed: int = 0) -> Params:
    """E_VH ~ N(0, 1), W_HH ~ N(0, 1/H) (spectral radius near 1), W_HV ~ N(0, 1/H), zero biases."""
    if vocab < 2 or hidden < 1:
        raise ValueError(f"rnn_lm_init needs vocab >= 2 and hidden >= 1, got {vocab=} {hidden=}")
    rng = np.random.default_rng(seed)
    return {
        "E_VH": rng.normal(0.0, 1.0, (vocab, hidden)),
        "W_HH": rng.normal(0.0, hidden**-0.5, (hidden, hidden)),
        "b_H": np.zeros(hidden),
        "W_HV": rng.normal(0.0, hidden**-0.5, (hidden, vocab)),
        "b_V": np.zeros(vocab),
    }


def rnn_lm_loss_and_grads(params: Params, inputs_BL: np.ndarray, targets_BL: np.ndarray,
                          h0_BH: np.ndarray | None = None):  # fmt: skip
    """Mean next-token cross-entropy of targets given inputs, its gradients, and h_L (to carry
    into the next window, as truncated BPTT does; no gradient flows back into h0)."""
    E_VH, W_HH, b_H = params["E_VH"], params["W_HH"], params["b_H"]
    B, L = inputs_BL.shape
    V, H = E_VH.shape
    h0_BH = np.zeros((B, H)) if h0_BH is None else h0_BH
    h_BLH, caches = rnn_forward(E_VH[inputs_BL], h0_BH, W_HH, b_H)
    logits_NV, lin_cache = linear_forward(h_BLH.reshape(B * L, H), params["W_HV"], params["b_V"])
    loss, dlogits_NV = softmax_cross_entropy(logits_NV, targets_BL.reshape(B * L))
    dh_NH, dW_HV, db_V = linear_backward(dlogits_NV, lin_cache)
    du_BLH, dW_HH, db_H, _, _ = rnn_backward(dh_NH.reshape(B, L, H), caches)
    grads = {"E_VH": embedding_backward(du_BLH, inputs_BL, V), "W_HH": dW_HH, "b_H": db_H,
             "W_HV": dW_HV, "b_V": db_V}  # fmt: skip
    return loss, grads, h_BLH[:, -1]


# ---- an LSTM: z = u + h W + b -> gates i, f, g, o; c' = f c + i g; h' = o tanh(c') ----


def lstm_step_forward(u_BG, h_BH, c_BH, W_HG, b_G):
    """One LSTM step; u_BG is the input's contribution to the four gate pre-activations."""
    z_BG = u_BG + h_BH @ W_HG + b_G
    zi, zf, zg, zo = np.split(z_BG, 4, axis=1)
    (i, _), (f, _), (g, _), (o, _) = (sigmoid_forward(zi), sigmoid_forward(zf),
                                      tanh_forward(zg), sigmoid_forward(zo))  # fmt: skip
    c_next_BH = f * c_BH + i * g
    tc_BH, _ = tanh_forward(c_next_BH)
    return o * tc_BH, c_next_BH, (h_BH, c_BH, W_HG, i, f, g, o, tc_BH)


def lstm_step_backward(dh_next_BH, dc_next_BH, cache):
    """Returns du [B, G], dh_prev, dc_prev, dW_HG, db_G. dc' gathers both of its routes: the
    carried dc' and h' = o tanh(c'); then c' = f c + i g splits it to c, f, i and g."""
    h_BH, c_BH, W_HG, i, f, g, o, tc_BH = cache
    do = dh_next_BH * tc_BH
    dc_BH = dc_next_BH + tanh_backward(dh_next_BH * o, tc_BH)
    dz_BG = np.concatenate(
        [
            sigmoid_backward(dc_BH * g, i),
            sigmoid_backward(dc_BH * c_BH, f),
            tanh_backward(dc_BH * i, g),
            sigmoid_backward(do, o),
        ],
        axis=1,
    )
    return dz_BG, dz_BG @ W_HG.T, dc_BH * f, h_BH.T @ dz_BG, dz_BG.sum(axis=0)


def lstm_forward(u_BLG, h0_BH, c0_BH, W_HG, b_G):
    """Hidden states h_1..h_L [B, L, H] and one cache per step."""
    h_BH, c_BH, caches, hs = h0_BH, c0_BH, [], []
    for t in range(u_BLG.shape[1]):
        h_BH, c_BH, cache = lstm_step_forward(u_BLG[:, t], h_BH, c_BH, W_HG, b_G)
        hs.append(h_BH)
        caches.append(cache)
    return np.stack(hs, axis=1), caches


def lstm_backward(dh_local_BLH: np.ndarray, caches):
    """BPTT through the LSTM. Returns du [B, L, G], dW_HG, db_G, and the gradients of the state
    (h_t, c_t) handed to step t + 1, [B, L, H] each: dL/dh_t in total, dL/dc_t through the
    steps after t (its route through h_t = o tanh(c_t) is already inside dL/dh_t)."""
    B, L, H = dh_local_BLH.shape
    du_BLG = np.zeros((B, L, 4 * H))
    dh_BLH, dc_BLH = np.zeros((B, L, H)), np.zeros((B, L, H))
    dW_HG, db_G = np.zeros((H, 4 * H)), np.zeros(4 * H)
    dh_carry, dc_carry = np.zeros((B, H)), np.zeros((B, H))
    for t in reversed(range(L)):
        dh_BLH[:, t], dc_BLH[:, t] = dh_local_BLH[:, t] + dh_carry, dc_carry
        du_BLG[:, t], dh_carry, dc_carry, dW_t, db_t = lstm_step_backward(
            dh_BLH[:, t], dc_BLH[:, t], caches[t]
        )
        dW_HG += dW_t
        db_G += db_t
    return du_BLG, dW_HG, db_G, dh_BLH, dc_BLH


# ---- plain SGD ----


def sgd_step(params: Params, grads: Params, lr: float, clip: float | None = None) -> Params:
    """theta - lr * g; with clip, g is first scaled so its global norm is at most clip."""
    if set(grads) != set(params):
        raise ValueError(f"grads keys {sorted(grads)} differ from params keys {sorted(params)}")
    scale = 1.0
    if clip is not None:
        norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        scale = min(1.0, clip / max(norm, 1e-12))
    return {k: params[k] - lr * scale * grads[k] for k in params}


def train_sgd(
    loss_and_grads: Callable[[Params], tuple[float, Params]],
    params: Params,
    lr: float,
    steps: int,
    clip: float | None = None,
    progress: bool = False,
):
    """`steps` SGD steps on one fixed objective; returns the final params and the loss of
    every step (before its update) as an array."""
    if lr <= 0 or steps < 1:
        raise ValueError(f"train_sgd needs lr > 0 and steps >= 1, got {lr=} {steps=}")
    losses = np.zeros(steps)
    for s in tqdm(range(steps), desc="sgd", disable=not progress):
        losses[s], grads = loss_and_grads(params)
        params = sgd_step(params, grads, lr, clip)
    return params, losses

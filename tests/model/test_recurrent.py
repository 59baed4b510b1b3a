"""RecurrentLM against torch.nn.RNN / LSTM / GRU with copied weights, and BPTT gradients
against central finite differences in float64.

Reference: torch modules (batch_first, bias, 1-3 layers, bidirectional too) whose state dict
is copied into our layout by `params_from_torch`; outputs, final states and every gradient
(weights and embedding) agree to 1e-5 in float32. A wrong gate order, transpose, direction
flip or layer wiring fails these.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llm.config import ModelConfig
from llm.model import abstract_params, forward
from llm.model.cache import init_cache
from llm.model.recurrent import params_from_torch

ARCHS = ["rnn", "lstm", "gru"]
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
V, D, B, L = 13, 8, 3, 7


def _pair(arch: str, n_layers: int, bidirectional: bool):
    """(cfg, our params, torch module, embedding table) with the same weights."""
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=D, n_layers=n_layers,
                      rnn_bidirectional=bidirectional, tie_embeddings=True)  # fmt: skip
    torch.manual_seed(n_layers)
    module = TORCH[arch](D, D, num_layers=n_layers, batch_first=True, bidirectional=bidirectional)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    embed = np.random.default_rng(0).normal(size=(V, D)).astype(np.float32)
    params = {"token_embed": embed, **params_from_torch(cfg, weights)}
    return cfg, jax.tree.map(jnp.asarray, params), module, embed


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(B, L))


CASES = [("rnn", 1, False), ("rnn", 3, True), ("lstm", 3, False), ("lstm", 2, True),
         ("gru", 2, False), ("gru", 3, True)]  # fmt: skip


@pytest.mark.parametrize("arch,n_layers,bidirectional", CASES)
def test_outputs_and_gradients_equal_torch(arch, n_layers, bidirectional):
    cfg, params, module, embed = _pair(arch, n_layers, bidirectional)
    tokens = _tokens()
    Z = 2 if bidirectional else 1
    weight_BLH = np.random.default_rng(1).normal(size=(B, L, Z * D)).astype(np.float32)

    def loss(p):
        out = forward(cfg, p, jnp.asarray(tokens), return_logits=False)
        return jnp.sum(out.hidden_BLD * weight_BLH), out.hidden_BLD

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    table = torch.tensor(embed, requires_grad=True)
    want, _ = module(table[torch.tensor(tokens)])
    (want * torch.tensor(weight_BLH)).sum().backward()
    np.testing.assert_allclose(hidden, want.detach().numpy(), atol=1e-5)
    want_grads = params_from_torch(cfg, {k: v.grad.numpy() for k, v in module.named_parameters()})
    assert set(want_grads) | {"token_embed"} == set(grads)
    for name, want_grad in want_grads.items():
        np.testing.assert_allclose(grads[name], want_grad, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(grads["token_embed"], table.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_final_state_equals_torch_h_n(arch):
    """The cache after a call holds torch's (h_n, c_n): the state truncated BPTT carries."""
    cfg, params, module, embed = _pair(arch, 2, False)
    tokens = _tokens(2)
    out = forward(cfg, params, jnp.asarray(tokens), cache=init_cache(cfg, B, L))
    _, final = module(torch.tensor(embed[tokens]))
    h_n, c_n = final if arch == "lstm" else (final, None)
    np.testing.assert_allclose(out.cache.h_YBH, h_n.detach().numpy(), atol=1e-5)
    if arch == "lstm":
        np.testing.assert_allclose(out.cache.c_YBH, c_n.detach().numpy(), atol=1e-5)
    else:
        assert out.cache.c_YBH is None
    np.testing.assert_array_equal(out.cache.lengths_B, [L] * B)


def test_logits_use_lm_head_or_tied_embedding():
    cfg, params, _, embed = _pair("gru", 2, False)
    out = forward(cfg, params, jnp.asarray(_tokens()))
    np.testing.assert_allclose(out.logits_BLV, out.hidden_BLD @ embed.T, atol=1e-5)
    untied = dataclasses.replace(cfg, tie_embeddings=False)
    head = np.random.default_rng(3).normal(size=(D, V)).astype(np.float32)
    out = forward(untied, {**params, "lm_head": jnp.asarray(head)}, jnp.asarray(_tokens()))
    np.testing.assert_allclose(out.logits_BLV, out.hidden_BLD @ head, atol=1e-5)


def _fd_case(arch: str):
    """A float64 model, packed rows (a document boundary and padding) and a logits loss."""
    cfg = ModelConfig(arch=arch, vocab_size=7, d_model=4, n_layers=2, dtype="float64",
                      param_dtype="float64", tie_embeddings=False, init_std=0.5)  # fmt: skip
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape)),
                          abstract_params(cfg))  # fmt: skip
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 7, size=(2, 8)))
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 0, 0], [1] * 8])
    weight = jnp.asarray(np.random.default_rng(5).normal(size=(2, 8, 7)))

    def loss(p):
        return jnp.sum(forward(cfg, p, tokens, segment_ids_BL=seg).logits_BLV * weight)

    return params, jax.jit(jax.value_and_grad(loss))  # one compile serves value and gradient


@pytest.mark.parametrize("arch", ARCHS)
def test_bptt_gradients_equal_central_finite_differences(arch):
    """Per parameter, the gradient's directional derivative along a random direction equals
    (f(p + eps v) - f(p - eps v)) / (2 eps) in float64."""
    with jax.enable_x64(True):
        params, value_and_grad = _fd_case(arch)
        grads = value_and_grad(params)[1]
        rng, eps = np.random.default_rng(6), 1e-6
        for name in sorted(params):
            v = jnp.asarray(rng.normal(size=params[name].shape))
            plus = value_and_grad({**params, name: params[name] + eps * v})[0]
            minus = value_and_grad({**params, name: params[name] - eps * v})[0]
            fd = (plus - minus) / (2 * eps)
            analytic = jnp.vdot(grads[name], v)
            assert abs(analytic) > 1e-3, name  # the parameter matters to the loss
            np.testing.assert_allclose(analytic, fd, rtol=1e-6, err_msg=name)

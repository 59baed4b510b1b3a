"""The model trains the same with attention_impl="pallas" (interpreted here) as with "xla".

A tiny config that routes every kernel feature the model uses through attention: GQA,
ALiBi, sliding window, logit soft-capping, and packed documents with padding. Loss and every
parameter gradient must agree to float32 rounding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model import abstract_params, forward
from tests.kernels.conftest import FAST_COMPILE

CFG = ModelConfig(
    vocab_size=61,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_seq_len=32,
    init_std=0.1,
    pos_encoding="alibi",
    sliding_window=6,
    attn_logit_softcap=20.0,
)


def _batch():
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, CFG.vocab_size)
    seg = jnp.array([[1] * 8 + [2] * 9 + [0] * 3, [1] * 20], jnp.int32)
    pos = jnp.array([list(range(8)) + list(range(9)) + [0] * 3, list(range(20))], jnp.int32)
    return tokens, seg, pos


def _random_params(cfg: ModelConfig):
    """Random N(0, 0.1) leaves (+1 for norm scales): any params do for a parity test, and this
    one small program compiles much faster than the model's own initialiser."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))

    @jax.jit
    def fill(key):
        out = []
        for (path, leaf), k in zip(leaves, jax.random.split(key, len(leaves)), strict=True):
            x = 0.1 * jax.random.normal(k, leaf.shape, jnp.float32)
            out.append(x + 1.0 if "scale" in jax.tree_util.keystr(path) else x)
        return jax.tree.unflatten(treedef, out)

    return fill(jax.random.key(0))


def _loss_and_grads(impl: str, params):
    cfg = dataclasses.replace(CFG, attention_impl=impl)
    tokens, seg, pos = _batch()

    def loss(params):
        logits = forward(cfg, params, tokens, positions_BL=pos, segment_ids_BL=seg).logits_BLV
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        weight = (seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])
        return (nll * weight).sum() / weight.sum()

    step = jax.jit(jax.value_and_grad(loss)).lower(params).compile(FAST_COMPILE)
    return step(params)


def test_pallas_model_matches_xla_loss_and_grads():
    params = _random_params(CFG)
    loss_pallas, grads_pallas = _loss_and_grads("pallas", params)
    loss_xla, grads_xla = _loss_and_grads("xla", params)
    np.testing.assert_allclose(loss_pallas, loss_xla, rtol=1e-6)
    flat_p = jax.tree_util.tree_leaves_with_path(grads_pallas)
    flat_x = jax.tree.leaves(grads_xla)
    assert len(flat_p) == len(flat_x)
    for (path, g_p), g_x in zip(flat_p, flat_x, strict=True):
        np.testing.assert_allclose(
            g_p, g_x, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path)
        )
    # the attention weights did get a gradient (so the comparison is not of zeros)
    assert max(float(jnp.abs(g).max()) for g in flat_x) > 1e-3

"""Auxiliary losses flow from a layer's `LayerOutput` through the layer loop to the output.

No dense layer emits one, so the tests patch one in: a block or MLP that reports a loss
whose per-layer value we can compute independently, then check the model's output (the sum
over layers) and its gradient, with the layers scanned, unrolled, rematerialised, and in the
engine's per-layer (decode) layout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import forward, unstack_layers
from llm.model.mlp import MLP
from llm.model.outputs import merge_aux
from llm.model.transformer import Block
from tests.model.conftest import make_cfg, params_for

LOOPS = {
    "scan": dict(scan_layers=True),
    "unrolled": dict(scan_layers=False),
    "scan_remat": dict(scan_layers=True, remat="full"),
}


def _block_emitting_mean_square(original):
    """Block.__call__ that also reports mean(output ** 2) as the loss "sq"."""

    def call(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        sq = jnp.mean(out.hidden_BLD.astype(jnp.float32) ** 2)
        return out.replace(aux_losses=merge_aux(out.aux_losses, {"sq": sq}))

    return call


def _mlp_emitting_weight_norm(original):
    """MLP.__call__ that also reports mean(W_down ** 2), a loss with a known gradient."""

    def call(self, x_BLD):
        out = original(self, x_BLD)
        return out.replace(aux_losses={"w2": jnp.mean(self.down.w[...] ** 2)})

    return call


@pytest.mark.parametrize("loop", list(LOOPS))
def test_block_aux_loss_is_summed_over_layers(loop, tokens_BL, monkeypatch):
    cfg = make_cfg(n_layers=3, **LOOPS[loop])
    params = params_for(cfg)
    plain = forward(cfg, params, tokens_BL, return_hidden_states=True)
    # by hand: each block's output comes from the unpatched model's hidden states
    expected = sum(float(jnp.mean(h**2)) for h in plain.hidden_states[1:])
    monkeypatch.setattr(Block, "__call__", _block_emitting_mean_square(Block.__call__))
    out = forward(cfg, params, tokens_BL)
    assert set(out.aux_losses) == {"sq"}
    np.testing.assert_allclose(float(out.aux_losses["sq"]), expected, rtol=1e-6)
    # the loss rides along without changing the forward itself
    np.testing.assert_allclose(out.logits_BLV, plain.logits_BLV, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["scan", "unrolled", "per_layer"])
def test_mlp_aux_loss_value_and_gradient(layout, tokens_BL, monkeypatch):
    cfg = make_cfg(n_layers=3, scan_layers=layout == "scan")
    params = params_for(cfg)
    w_YFD = params["blocks"]["mlp"]["down"]["w"]
    monkeypatch.setattr(MLP, "__call__", _mlp_emitting_weight_norm(MLP.__call__))
    inputs = unstack_layers(params) if layout == "per_layer" else params

    def aux(p):
        return forward(cfg, p, tokens_BL, return_logits=False).aux_losses["w2"]

    value, grads = jax.value_and_grad(aux)(inputs)
    n = w_YFD[0].size
    np.testing.assert_allclose(float(value), float(jnp.sum(w_YFD**2)) / n, rtol=1e-6)
    blocks = grads["blocks"]
    if layout == "per_layer":  # a tuple of per-layer trees: stack them back
        blocks = jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *blocks)
    down = blocks["mlp"]["down"]["w"]
    np.testing.assert_allclose(down, 2 * w_YFD / n, rtol=1e-6, atol=1e-9)
    # nothing else feeds this loss, so every other gradient is exactly zero
    for path, g in jax.tree.leaves_with_path(grads):
        if "down" not in jax.tree_util.keystr(path):
            assert not np.any(np.asarray(g)), jax.tree_util.keystr(path)


def test_cached_forward_sums_aux_losses_too(tokens_BL, monkeypatch):
    """A prefill from an empty cache runs the same blocks as a plain forward."""
    from llm.model.cache import init_cache

    cfg = make_cfg(n_layers=3)
    params = params_for(cfg)
    plain = forward(cfg, params, tokens_BL, return_hidden_states=True)
    expected = sum(float(jnp.mean(h**2)) for h in plain.hidden_states[1:])
    assert forward(cfg, params, tokens_BL, cache=init_cache(cfg, 2, 16)).aux_losses == {}
    monkeypatch.setattr(Block, "__call__", _block_emitting_mean_square(Block.__call__))
    for p in (params, unstack_layers(params)):
        out = forward(cfg, p, tokens_BL, cache=init_cache(cfg, 2, 16))
        np.testing.assert_allclose(float(out.aux_losses["sq"]), expected, rtol=1e-5)


def test_merge_aux_sums_names_given_twice():
    merged = merge_aux({"a": jnp.float32(1), "b": jnp.float32(2)}, {"a": jnp.float32(4)}, {})
    assert {k: float(v) for k, v in merged.items()} == {"a": 5.0, "b": 2.0}

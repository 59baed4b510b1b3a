"""Calibration activations (llm/compress/calibration.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from llm.compress import calibration as C
from llm.config import DataConfig
from llm.data import prepare_documents, split_documents
from llm.model import forward, norms
from llm.model.mlp import ACTIVATIONS
from llm.tokenizers import load_tokenizer
from tests.model.conftest import make_cfg, params_for

CFG = make_cfg(vocab_size=256, activation="swiglu", norm="rmsnorm", n_kv_heads=2)


def _tokens():
    return jax.random.randint(jax.random.key(3), (2, 12), 0, CFG.vocab_size)


def test_layer_by_layer_equals_the_forward_pass():
    params, tokens = params_for(CFG), _tokens()
    x = C.embed_inputs(CFG, params, tokens)
    states = forward(CFG, params, tokens, return_hidden_states=True).hidden_states
    np.testing.assert_allclose(np.asarray(x), np.asarray(states[0]), rtol=1e-6, atol=1e-6)
    for i in range(CFG.n_layers):
        x = C.run_layer(CFG, C.layer_params(params, i), x)
        np.testing.assert_allclose(np.asarray(x), np.asarray(states[i + 1]), rtol=1e-5, atol=1e-5)


def test_linear_inputs_are_what_each_linear_multiplies():
    params, tokens = params_for(CFG), _tokens()
    x_BLD = C.embed_inputs(CFG, params, tokens)
    layer = C.layer_params(params, 0)
    X = C.linear_inputs(CFG, layer, x_BLD)
    assert set(X) == {f"attn/{n}/w" for n in "qkvo"} | {
        f"mlp/{n}/w" for n in ("gate", "up", "down")
    }
    normed = norms.rms_norm(x_BLD, layer["attn_norm"]["scale"], CFG.norm_eps).reshape(-1, 32)
    for name in ("q", "k", "v"):
        np.testing.assert_allclose(np.asarray(X[f"attn/{name}/w"]), np.asarray(normed), atol=1e-6)
    # the down projection reads act(gate) * up of the MLP's own input
    mlp_in = X["mlp/up/w"]
    gate = mlp_in @ layer["mlp"]["gate"]["w"]
    up = mlp_in @ layer["mlp"]["up"]["w"]
    h = ACTIVATIONS[CFG.activation](gate) * up
    np.testing.assert_allclose(np.asarray(X["mlp/down/w"]), np.asarray(h), rtol=1e-5, atol=1e-5)
    assert X["attn/o/w"].shape == (24, CFG.n_heads * (CFG.d_model // CFG.n_heads))


def test_set_layer_and_stack_layers_round_trip():
    params = params_for(CFG)
    layer = jax.tree.map(lambda a: a + 1.0, C.layer_params(params, 1))
    same = C.set_layer(params, 1, layer)  # same structure: stays stacked
    assert not isinstance(same["blocks"], tuple)
    np.testing.assert_array_equal(np.asarray(C.layer_params(same, 1)["mlp"]["up"]["w"]),
                                  np.asarray(layer["mlp"]["up"]["w"]))  # fmt: skip
    changed = {**layer, "extra": jnp.zeros(())}
    split = C.set_layer(params, 0, changed)  # a new structure: per-layer layout
    assert isinstance(split["blocks"], tuple) and "extra" in split["blocks"][0]
    restacked = C.stack_layers(C.set_layer(split, 0, C.layer_params(params, 0)))
    for a, b in zip(jax.tree.leaves(restacked), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_calibration_windows_come_from_the_training_split():
    tok = load_tokenizer("byte")
    rows = C.calibration_tokens(tok, n_seqs=6, seq_len=40, seed=1)
    again = C.calibration_tokens(tok, n_seqs=6, seq_len=40, seed=1)
    np.testing.assert_array_equal(rows, again)  # deterministic in the seed
    data = DataConfig()
    split = split_documents(prepare_documents(data, "shakespeare")[0], data.val_fraction, data.seed)
    train = "\n".join(d.text for d in split["train"]).encode()
    val = [d.text.encode() for d in split["validation"]]
    for row in rows:
        window = bytes(row.tolist())
        assert window in train
        assert not any(window in v for v in val)

"""RecurrentLM's state: decoding with RecurrentCache, packed rows, padding, carrying the
state across calls (truncated BPTT), dropout placement, the Cache protocol and refusals.

Every reference here is the model itself run another way (whole sequence vs one token at a
time, packed vs alone, one call vs two), so each test pins one invariant of the cache
contract in llm/model/recurrent.py's docstring.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llm.config import ModelConfig
from llm.model import abstract_params, init_params
from llm.model import forward as eager_forward
from llm.model.cache import Cache, init_cache
from llm.model.extras import Extras
from llm.model.recurrent import RecurrentCache

ARCHS = ["rnn", "lstm", "gru"]
V, D = 13, 8
# jitted: one compile per call signature instead of one per op (seconds on a loaded CPU)
forward = jax.jit(eager_forward, static_argnums=0,
                  static_argnames=("return_logits", "return_hidden_states"))  # fmt: skip


def _setup(arch: str, n_layers: int = 2, **overrides):
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=D, n_layers=n_layers,
                      tie_embeddings=False, **overrides)  # fmt: skip
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.6, 0.6, a.shape), jnp.float32),
                          abstract_params(cfg))  # fmt: skip
    return cfg, params


def _tokens(B: int, L: int, seed: int = 1) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(B, L)))


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_one_token_at_a_time_equals_full_forward(arch):
    cfg, params = _setup(arch)
    tokens = _tokens(2, 6)
    full = forward(cfg, params, tokens).logits_BLV
    step = jax.jit(lambda c, t: eager_forward(cfg, params, t, cache=c))
    cache = init_cache(cfg, 2, 6)
    assert isinstance(cache, Cache)
    for t in range(6):
        out = step(cache, tokens[:, t : t + 1])
        cache = out.cache
        np.testing.assert_allclose(out.logits_BLV[:, 0], full[:, t], atol=1e-5)
        np.testing.assert_array_equal(cache.lengths_B, [t + 1, t + 1])


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_cache_carried_across_calls_equals_one_call(arch):
    cfg, params = _setup(arch)
    tokens = _tokens(3, 8)
    one = forward(cfg, params, tokens, cache=init_cache(cfg, 3, 8))
    first = forward(cfg, params, tokens[:, :3], cache=init_cache(cfg, 3, 8))
    second = forward(cfg, params, tokens[:, 3:], cache=first.cache)
    logits = jnp.concatenate([first.logits_BLV, second.logits_BLV], axis=1)
    np.testing.assert_allclose(logits, one.logits_BLV, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), second.cache, one.cache)


def test_packed_row_equals_documents_alone():
    """Row = document A (segment 1), document B (segment 2), padding: each document's
    logits equal those of the document run alone (the state resets at B)."""
    cfg, params = _setup("lstm")
    doc_a, doc_b = _tokens(1, 3, seed=2), _tokens(1, 4, seed=3)
    row = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 1), jnp.int32)], axis=1)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
    packed = forward(cfg, params, row, segment_ids_BL=seg).logits_BLV
    np.testing.assert_allclose(packed[:, :3], forward(cfg, params, doc_a).logits_BLV, atol=1e-5)
    np.testing.assert_allclose(packed[:, 3:7], forward(cfg, params, doc_b).logits_BLV, atol=1e-5)
    unsegmented = forward(cfg, params, row).logits_BLV  # without the reset B would see A
    assert not np.allclose(unsegmented[:, 3:7], packed[:, 3:7], atol=1e-3)


def test_bidirectional_packed_row_equals_documents_alone():
    """The backward direction resets at document boundaries too, and skips padding."""
    cfg, params = _setup("gru", n_layers=2, rnn_bidirectional=True)
    doc_a, doc_b = _tokens(1, 3, seed=4), _tokens(1, 2, seed=5)
    row = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 2), jnp.int32)], axis=1)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0]])
    packed = forward(cfg, params, row, segment_ids_BL=seg, return_logits=False).hidden_BLD
    assert packed.shape == (1, 7, 2 * D)
    alone_a = forward(cfg, params, doc_a, return_logits=False).hidden_BLD
    alone_b = forward(cfg, params, doc_b, return_logits=False).hidden_BLD
    np.testing.assert_allclose(packed[:, :3], alone_a, atol=1e-5)
    np.testing.assert_allclose(packed[:, 3:5], alone_b, atol=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_padding_leaves_state_unchanged(arch):
    cfg, params = _setup(arch)
    tokens = _tokens(1, 4)
    seg = jnp.asarray([[1, 1, 0, 1]])
    cache = forward(cfg, params, _tokens(1, 2, seed=9), cache=init_cache(cfg, 1, 8)).cache
    padded = forward(cfg, params, tokens, segment_ids_BL=seg, cache=cache)
    dense = forward(cfg, params, tokens[:, jnp.asarray([0, 1, 3])], cache=cache)
    np.testing.assert_allclose(padded.logits_BLV[:, [0, 1, 3]], dense.logits_BLV, atol=1e-5)
    np.testing.assert_array_equal(padded.hidden_BLD[:, 2], padded.hidden_BLD[:, 1])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), padded.cache, dense.cache
    )
    idle = forward(cfg, params, tokens, segment_ids_BL=jnp.zeros((1, 4), jnp.int32), cache=cache)
    jax.tree.map(np.testing.assert_array_equal, idle.cache, cache)  # all padding: nothing moves


def test_dropout_placement_follows_torch():
    """dropout_key=None is deterministic; `resid_dropout` acts between layers only (one
    layer: no effect, as torch's `dropout=`), `embed_dropout` on the embedding."""
    tokens, key = _tokens(2, 5), jax.random.key(3)

    def run(n_layers, key, **rates):
        cfg, params = _setup("gru", n_layers=n_layers, **rates)
        return forward(cfg, params, tokens, dropout_key=key).logits_BLV

    plain = run(2, None)
    np.testing.assert_array_equal(run(2, None, resid_dropout=0.5, embed_dropout=0.5), plain)
    np.testing.assert_array_equal(run(2, key), plain)  # rates 0: a key changes nothing
    assert not np.allclose(run(2, key, resid_dropout=0.5), plain, atol=1e-3)
    np.testing.assert_array_equal(run(1, key, resid_dropout=0.5), run(1, None))
    assert not np.allclose(run(1, key, embed_dropout=0.5), run(1, None), atol=1e-3)


def test_rollback_refuses_to_shrink():
    cfg, params = _setup("gru")
    cache = forward(cfg, params, _tokens(2, 3), cache=init_cache(cfg, 2, 8)).cache
    assert cache.rollback(jnp.asarray([3, 5])) is cache  # no row shrinks: nothing to forget
    with pytest.raises(ValueError, match=r"rows \[1\] would shrink"):
        cache.rollback(jnp.asarray([3, 2]))
    with pytest.raises(ValueError, match="inside jit"):
        jax.jit(lambda c, n: c.rollback(n).lengths_B)(cache, jnp.asarray([3, 3]))


def test_select_rows_and_put_rows():
    cfg, params = _setup("lstm")
    big = forward(cfg, params, _tokens(3, 4), cache=init_cache(cfg, 3, 8)).cache
    picked = big.select_rows(jnp.asarray([2, 0, 2]))
    for a, b in zip(jax.tree.leaves(picked), jax.tree.leaves(big), strict=True):
        np.testing.assert_array_equal(a, jnp.take(b, jnp.asarray([2, 0, 2]), axis=a.ndim - 2))
    small = forward(cfg, params, _tokens(2, 2, seed=7), cache=init_cache(cfg, 2, 8)).cache
    put = big.put_rows(jnp.asarray([1, 7]), small)  # row 7 does not exist: dropped
    np.testing.assert_array_equal(put.h_YBH[:, 1], small.h_YBH[:, 0])
    np.testing.assert_array_equal(put.c_YBH[:, 1], small.c_YBH[:, 0])
    np.testing.assert_array_equal(put.h_YBH[:, [0, 2]], big.h_YBH[:, [0, 2]])
    np.testing.assert_array_equal(put.lengths_B, [4, 2, 4])
    with pytest.raises(ValueError, match="different models"):
        big.put_rows(jnp.asarray([0]), init_cache(_setup("gru")[0], 1, 8))


def test_hidden_states_layout():
    cfg, params = _setup("rnn", n_layers=3)
    tokens = _tokens(2, 5)
    out = forward(cfg, params, tokens, return_hidden_states=True)
    assert out.hidden_states.shape == (4, 2, 5, D)
    np.testing.assert_array_equal(out.hidden_states[0], params["token_embed"][tokens])
    np.testing.assert_array_equal(out.hidden_states[-1], out.hidden_BLD)
    bi_cfg, bi_params = _setup("rnn", n_layers=3, rnn_bidirectional=True)
    enc = forward(bi_cfg, bi_params, tokens, return_logits=False, return_hidden_states=True)
    assert enc.logits_BLV is None and enc.hidden_states.shape == (3, 2, 5, 2 * D)
    np.testing.assert_array_equal(enc.hidden_states[-1], enc.hidden_BLD)


def test_refusals():
    cfg, params = _setup("lstm")
    bi_cfg, bi_params = _setup("lstm", rnn_bidirectional=True)
    tokens = _tokens(1, 3)
    with pytest.raises(ValueError, match="encoder"):
        eager_forward(bi_cfg, bi_params, tokens)
    with pytest.raises(ValueError, match="unidirectional"):
        init_cache(bi_cfg, 1, 4)
    with pytest.raises(ValueError, match="kv_cache_dtype=auto"):
        init_cache(dataclasses.replace(cfg, kv_cache_dtype="int8"), 1, 4)
    with pytest.raises(TypeError, match="RecurrentCache"):
        eager_forward(cfg, params, tokens, cache=object())
    adapters = {"attn": {"down": jnp.zeros((2, D, 1))}}
    with pytest.raises(ValueError, match="Transformer-only"):
        eager_forward(cfg, params, tokens, extras=Extras(adapters=adapters))
    with pytest.raises(ValueError, match="unidirectional rnn / lstm / gru"):
        RecurrentCache.init(ModelConfig(), 1)
    assert "lm_head" not in abstract_params(bi_cfg)  # an encoder has no output layer


@pytest.mark.parametrize("arch,bidirectional", [("lstm", False), ("gru", True), ("rnn", True)])
def test_parameter_count_matches_torch(arch, bidirectional):
    """Our recurrent params hold exactly torch's count (3 layers, so w_ih's 2H-wide upper
    layers are counted)."""
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=D, n_layers=3,
                      rnn_bidirectional=bidirectional, tie_embeddings=True)  # fmt: skip
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[arch](
        D, D, num_layers=3, bidirectional=bidirectional
    )
    ours = {k: v for k, v in abstract_params(cfg).items() if k != "token_embed"}
    assert sum(math.prod(v.shape) for v in ours.values()) == sum(
        p.numel() for p in module.parameters()
    )


def test_init_is_torch_uniform():
    """Every recurrent weight and bias drawn from U(-1/sqrt(H), 1/sqrt(H)) like torch's."""
    cfg = ModelConfig(arch="gru", vocab_size=V, d_model=D, n_layers=2, rnn_bidirectional=True)
    params = init_params(cfg, jax.random.key(0, impl="rbg"))  # rbg: compiles in ~1/10 the time
    bound = 1 / math.sqrt(D)
    for name in ("w_ih0", "w_ih", "w_hh", "bias_ih", "bias_hh"):
        values = np.asarray(params[name])
        assert np.abs(values).max() <= bound and values.std() > 0.4 * bound, name

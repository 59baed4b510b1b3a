"""The encoder switches: bidirectional attention (`model.causal=false`), BERT's embeddings
(token types, `embed_norm`). The mirror of test_causality.py: an encoder's
output at position t depends on inputs after t, on every attention backend."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ModelConfig
from llm.config.base import ConfigError
from llm.model import forward
from llm.model.accounting import forward_flops_per_token
from llm.model.cache import init_cache
from tests.model.conftest import make_cfg, params_for
from tests.model.test_causality import dependence

# BERT's layout: post-norm, learned positions, biases, exact GELU, embedding LayerNorm
BERT = dict(
    causal=False, norm_placement="post", qkv_bias=True, out_bias=True, mlp_bias=True,
    embed_norm=True, type_vocab_size=2,
)  # fmt: skip
IMPLS = ("xla", "xla_flash", "jax", "pallas")


@pytest.fixture(scope="module")
def bert_cfg():
    return make_cfg(**BERT)


@pytest.mark.parametrize(
    "impl",
    [*IMPLS[:-1], pytest.param("pallas", marks=pytest.mark.slow)],  # interpreted kernel
)
def test_encoder_sees_the_future(impl):
    cfg = make_cfg(causal=False, attention_impl=impl)
    dep = dependence(cfg, params_for(cfg), L=8)
    assert np.all(dep > 0.0), (impl, dep)  # every output depends on every input


def test_encoder_keeps_packed_documents_apart():
    cfg = make_cfg(causal=False)
    segment_ids = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 0, 0]])
    dep = dependence(cfg, params_for(cfg), segment_ids, positions)
    assert np.all(dep[:4, :4] > 0.0) and np.all(dep[4:8, 4:8] > 0.0), dep
    assert np.all(dep[:4, 4:] == 0.0) and np.all(dep[4:8, :4] == 0.0), dep


@pytest.mark.slow  # four backends, the Pallas kernel interpreted
def test_backends_agree_bidirectional(bert_cfg, tokens_BL):
    """Padding (segment 0) at the end of row 1; every backend equals the xla reference."""
    params = params_for(bert_cfg)
    seg = jnp.ones_like(tokens_BL).at[1, 8:].set(0)
    fwd = jax.jit(forward, static_argnums=0)
    xla = dataclasses.replace(bert_cfg, attention_impl="xla")
    ref = fwd(xla, params, tokens_BL, segment_ids_BL=seg).hidden_BLD
    for impl in IMPLS[1:]:
        cfg = dataclasses.replace(bert_cfg, attention_impl=impl)
        out = fwd(cfg, params, tokens_BL, segment_ids_BL=seg).hidden_BLD
        np.testing.assert_allclose(out[0], ref[0], atol=2e-5, err_msg=impl)
        np.testing.assert_allclose(out[1, :8], ref[1, :8], atol=2e-5, err_msg=impl)


def test_return_attention_is_bidirectional(bert_cfg, tokens_BL):
    params = params_for(bert_cfg)
    out = forward(bert_cfg, params, tokens_BL, return_attention=True)
    probs = np.asarray(out.attention_YBNLS)
    assert np.all(probs > 0.0)  # nothing masked: the upper triangle too
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    plain = forward(bert_cfg, params, tokens_BL).hidden_BLD
    np.testing.assert_allclose(out.hidden_BLD, plain, atol=2e-5)


def test_token_types_enter_the_embedding(bert_cfg, tokens_BL):
    params = params_for(bert_cfg)
    zeros = forward(bert_cfg, params, tokens_BL, token_types_BL=jnp.zeros_like(tokens_BL))
    default = forward(bert_cfg, params, tokens_BL)
    np.testing.assert_array_equal(zeros.hidden_BLD, default.hidden_BLD)
    ones = forward(bert_cfg, params, tokens_BL, token_types_BL=jnp.ones_like(tokens_BL))
    assert not np.allclose(ones.hidden_BLD, default.hidden_BLD, atol=1e-3)
    # embed_norm: hidden_states[0] (the embedding output) is LayerNorm'd (scale 1, bias 0)
    h0 = forward(bert_cfg, params, tokens_BL, return_hidden_states=True).hidden_states[0]
    np.testing.assert_allclose(h0.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(h0.std(-1), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        cfg = make_cfg()
        forward(cfg, params_for(cfg), tokens_BL, token_types_BL=jnp.zeros_like(tokens_BL))


def test_encoder_refuses_decoding_and_bad_switches():
    with pytest.raises(ValueError, match="causal=false"):
        init_cache(make_cfg(causal=False), 1, 8)
    with pytest.raises(ConfigError, match="sliding_window"):
        make_cfg(causal=False, sliding_window=4)
    with pytest.raises(ConfigError, match="causal"):
        ModelConfig(arch="lstm", causal=False)
    with pytest.raises(ConfigError, match="type_vocab_size"):
        ModelConfig(arch="gru", type_vocab_size=2)
    with pytest.raises(ConfigError, match="type_vocab_size"):
        make_cfg(type_vocab_size=-1)


def test_bidirectional_flops_count_every_key():
    """Per token, attention reads L keys (not the causal mean (L + 1) / 2)."""
    enc, dec = make_cfg(causal=False), make_cfg()
    per_key = 4 * dec.n_heads * dec.head_size * dec.n_layers
    diff = forward_flops_per_token(enc, 16) - forward_flops_per_token(dec, 16)
    assert diff == pytest.approx(per_key * (16 - 17 / 2))

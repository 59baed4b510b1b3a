"""Mamba (`model.arch: mamba`, llm/model/ssm.py) and its hybrids: the parallel scan against
the sequential recurrence, causality, packed documents, padding, cached decoding through the
cache protocol, and the config's refusals.

References are the plain forms beside each fast path (`scan_sequential`, a padded
`conv_general_dilated`, the model run with `ssm_scan: sequential`) or the model itself run
another way (packed vs alone, cached vs whole).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ModelConfig
from llm.config.base import ConfigError
from llm.model import abstract_params
from llm.model import forward as eager_forward
from llm.model.cache import Cache, init_cache
from llm.model.selective_scan import (
    causal_conv,
    causal_conv_reference,
    scan_parallel,
    scan_sequential,
)
from llm.model.ssm_cache import SSMCache, layer_kinds

V, D = 40, 32
PURE = ModelConfig(arch="mamba", vocab_size=V, d_model=D, n_layers=2, norm="rmsnorm",
                   ssm_state=4, tie_embeddings=False, max_seq_len=32)  # fmt: skip
# 3 layers, attention every 2nd: mamba, attention, mamba (the pattern's both kinds and a tail)
HYBRID = dataclasses.replace(PURE, n_layers=3, ssm_attention_every=2, pos_encoding="rope",
                             n_heads=4, d_ff=64)  # fmt: skip
CFGS = {"pure": PURE, "hybrid": HYBRID}
forward = jax.jit(eager_forward, static_argnums=0,
                  static_argnames=("return_logits", "return_hidden_states"))  # fmt: skip


def _params(cfg: ModelConfig, seed: int = 0):
    """NumPy-drawn params (std 0.3; norms, A_log and D around their usual values)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        mean = 1.0 if ("norm" in name or "'D'" in name or "A_log" in name) else 0.0
        return jnp.asarray(mean + rng.normal(0, 0.3, x.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


# the hybrid's tests compile attention too (each ~2x a pure one's time): CI's slow set
@pytest.fixture(scope="module", params=["pure", pytest.param("hybrid", marks=pytest.mark.slow)])
def model(request):
    cfg = CFGS[request.param]
    return request.param, cfg, _params(cfg)


def _tokens(B: int, L: int, seed: int = 1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(B, L)), jnp.int32)


def test_layer_pattern():
    assert layer_kinds(PURE) == ("mamba", "mamba")
    assert layer_kinds(HYBRID) == ("mamba", "attention", "mamba")
    assert (
        layer_kinds(dataclasses.replace(HYBRID, n_layers=8, ssm_attention_every=4)).count(
            "attention"
        )
        == 2
    )


def test_parallel_scan_equals_sequential_values_and_gradients():
    rng = np.random.default_rng(0)
    shape = (2, 13, 3, 4)  # B, L, E, N; 13: not a power of two
    a = jnp.asarray(rng.uniform(0.2, 1.0, shape), jnp.float32)
    b = jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
    h0 = jnp.asarray(rng.normal(0, 1, (2, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
    for got, want in zip(scan_parallel(a, b, h0), scan_sequential(a, b, h0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def loss(scan, a, b, h0):
        h, last = scan(a, b, h0)
        return jnp.sum(h * w) + jnp.sum(last**2)

    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    grads = [grad(s, a, b, h0) for s in (scan_parallel, scan_sequential)]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    h, _ = scan_sequential(a, b, h0)  # the recurrence itself, written out at t = 0 and 1
    np.testing.assert_allclose(h[:, 1], a[:, 1] * (a[:, 0] * h0 + b[:, 0]) + b[:, 1], rtol=1e-6)


def test_conv_equals_reference_and_continues_from_its_window():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(0, 1, (2, 9, 5)), jnp.float32)
    w, bias = jnp.asarray(rng.normal(0, 1, (4, 5)), jnp.float32), jnp.ones((5,), jnp.float32)
    ones, conv = jnp.ones((2, 9), jnp.int32), jax.jit(causal_conv)
    whole, _ = conv(x, w, bias, jnp.zeros((2, 3, 5)), ones)
    np.testing.assert_allclose(whole, causal_conv_reference(x, w, bias), rtol=1e-5, atol=1e-5)
    first, window = conv(x[:, :4], w, bias, jnp.zeros((2, 3, 5)), ones[:, :4])
    second, _ = conv(x[:, 4:], w, bias, window, ones[:, 4:])
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # two value-and-grad compiles per config (the scan itself is tested above)
def test_sequential_scan_model_equals_parallel(model):
    """The whole model with the lax.scan reference gives the same logits and gradients (the
    reference side also recomputes its Mamba layers in the backward pass: remat=full)."""
    _, cfg, params = model
    tokens = _tokens(2, 11)
    seq = dataclasses.replace(cfg, ssm_scan="sequential", remat="full")

    def loss(p, c):
        logits = eager_forward(c, p, tokens).logits_BLV
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

    (_, y_par), g_par = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        params, cfg
    )
    (_, y_seq), g_seq = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        params, seq
    )
    np.testing.assert_allclose(y_par, y_seq, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_par), jax.tree.leaves(g_seq), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_causality_through_gradients(model):
    """d logits[t] / d embedding[s] is zero for every s > t and nonzero for s <= t."""
    name, cfg, params = model
    L, t = 8, 4
    emb = jnp.asarray(np.random.default_rng(2).normal(0, 1, (1, L, D)), jnp.float32)

    def readout(e):
        return eager_forward(cfg, params, jnp.zeros((1, L), jnp.int32),
                             input_embeddings_BLD=e).logits_BLV[0, t].sum()  # fmt: skip

    g = np.abs(np.asarray(jax.jit(jax.grad(readout))(emb))[0]).sum(-1)
    assert np.all(g[t + 1 :] == 0), (name, g)
    assert np.all(g[: t + 1] > 0), (name, g)


def test_packed_row_equals_documents_alone(model):
    """Row = document A (segment 1), document B (segment 2), padding: each document's logits
    equal the document run alone (the state and the conv window reset at B); without the
    segment ids B would see A."""
    name, cfg, params = model
    doc_a, doc_b = _tokens(1, 5, seed=3), _tokens(1, 6, seed=4)
    row = jnp.concatenate([doc_a, doc_b, _tokens(1, 2, seed=5)], axis=1)  # padding: junk ids
    seg = jnp.asarray([[1] * 5 + [2] * 6 + [0] * 2])
    pos = jnp.asarray([list(range(5)) + list(range(6)) + [0, 0]])
    packed = forward(cfg, params, row, positions_BL=pos, segment_ids_BL=seg).logits_BLV
    np.testing.assert_allclose(packed[:, :5], forward(cfg, params, doc_a).logits_BLV, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:11], forward(cfg, params, doc_b).logits_BLV, atol=1e-5)
    unsegmented = forward(cfg, params, row, positions_BL=pos).logits_BLV
    assert not np.allclose(unsegmented[:, 5:11], packed[:, 5:11], atol=1e-3), name


def test_cached_decode_equals_full_forward(model):
    """A padded prefill (row 1's prompt is one token shorter), then one token per step:
    every step's logits equal each row's full forward, to 1e-5."""
    name, cfg, params = model
    seqs = [_tokens(1, 8, seed=6)[0], _tokens(1, 7, seed=7)[0]]
    cache = init_cache(cfg, 2, 16)
    assert isinstance(cache, Cache) and isinstance(cache, SSMCache)
    step = jax.jit(lambda c, t, s: eager_forward(cfg, params, t, segment_ids_BL=s, cache=c))
    prompt = jnp.stack([seqs[0][:3], seqs[1][:3]])
    out = step(cache, prompt, jnp.asarray([[1, 1, 1], [1, 1, 0]]))
    got = [[out.logits_BLV[0, i] for i in range(3)], [out.logits_BLV[1, i] for i in range(2)]]
    cache, ones = out.cache, jnp.ones((2, 1), jnp.int32)
    for t in range(5):
        out = step(cache, jnp.asarray([[seqs[0][3 + t]], [seqs[1][2 + t]]]), ones)
        cache = out.cache
        got[0].append(out.logits_BLV[0, 0])
        got[1].append(out.logits_BLV[1, 0])
    np.testing.assert_array_equal(cache.lengths_B, [8, 7])
    for row, seq in enumerate(seqs):
        full = forward(cfg, params, seq[None]).logits_BLV[0]
        np.testing.assert_allclose(jnp.stack(got[row]), full, atol=1e-5, err_msg=f"{name} {row}")


def test_left_padded_prefill_then_decode_equals_full_forward():
    """A prefill with padding on the LEFT (2 pads, then 5 tokens) keeps the conv window of
    the last real tokens, so the decode steps after it equal the full forward (a window
    taken from the first n positions was wrong here: errors of 7.5 in the logits)."""
    cfg, params = PURE, _params(PURE)
    seq = _tokens(1, 8, seed=6)
    prompt = jnp.concatenate([jnp.zeros((1, 2), jnp.int32), seq[:, :5]], axis=1)
    out = forward(cfg, params, prompt, segment_ids_BL=jnp.asarray([[0, 0, 1, 1, 1, 1, 1]]),
                  cache=init_cache(cfg, 1, 16))  # fmt: skip
    got, cache = [out.logits_BLV[0, 2:]], out.cache
    for t in range(5, 8):
        out = forward(cfg, params, seq[:, t : t + 1], cache=cache)
        got.append(out.logits_BLV[0])
        cache = out.cache
    full = forward(cfg, params, seq).logits_BLV[0]
    np.testing.assert_allclose(jnp.concatenate(got), full, atol=1e-5)


def test_idle_rows_keep_their_state(model):
    """A step whose row is all padding (the engine's finished rows) leaves that row's conv
    window, SSM state and length exactly as they were (a hybrid's KV cache writes the
    padding above the row's length, where it is masked, as the Transformer's does)."""
    _, cfg, params = model
    cache = forward(cfg, params, _tokens(2, 3), cache=init_cache(cfg, 2, 8)).cache
    out = forward(cfg, params, _tokens(2, 1, seed=9), segment_ids_BL=jnp.asarray([[1], [0]]),
                  cache=cache)  # fmt: skip
    new, old = out.cache, cache
    np.testing.assert_array_equal(new.conv_YBWE[:, 1], old.conv_YBWE[:, 1])
    np.testing.assert_array_equal(new.ssm_YBEN[:, 1], old.ssm_YBEN[:, 1])
    assert not np.allclose(new.ssm_YBEN[:, 0], old.ssm_YBEN[:, 0])
    np.testing.assert_array_equal(new.lengths_B, [4, 3])
    if new.kv is not None:
        np.testing.assert_array_equal(new.kv.lengths_B, [4, 3])


def test_select_put_rows_and_rollback(model):
    _, cfg, params = model
    big = forward(cfg, params, _tokens(3, 4), cache=init_cache(cfg, 3, 8)).cache
    small = forward(cfg, params, _tokens(1, 2, seed=8), cache=init_cache(cfg, 1, 8)).cache
    put = big.put_rows(jnp.asarray([1]), small)
    np.testing.assert_array_equal(put.ssm_YBEN[:, 1], small.ssm_YBEN[:, 0])
    np.testing.assert_array_equal(put.conv_YBWE[:, [0, 2]], big.conv_YBWE[:, [0, 2]])
    np.testing.assert_array_equal(put.lengths_B, [4, 2, 4])
    picked = big.select_rows(jnp.asarray([2, 0]))
    np.testing.assert_array_equal(picked.ssm_YBEN, big.ssm_YBEN[:, [2, 0]])
    if cfg.ssm_attention_every:
        np.testing.assert_array_equal(put.kv.k_YBKSH[:, 1], small.kv.k_YBKSH[:, 0])
    assert big.rollback(jnp.asarray([4, 5, 4])) is big  # nothing shrinks
    with pytest.raises(ValueError, match=r"rows \[1\] would shrink"):
        big.rollback(jnp.asarray([4, 3, 4]))


def test_hidden_states_layout():
    params = _params(PURE)
    out = forward(PURE, params, _tokens(2, 5), return_hidden_states=True)
    assert out.hidden_states.shape == (3, 2, 5, D)
    np.testing.assert_array_equal(out.hidden_states[0], params["token_embed"][_tokens(2, 5)])


def test_config_refusals():
    with pytest.raises(ConfigError, match="qk_norm"):
        ModelConfig(arch="mamba", qk_norm=True)  # a pure SSM has no attention
    with pytest.raises(ConfigError, match="residual"):
        dataclasses.replace(HYBRID, residual=False)
    with pytest.raises(ConfigError, match="pos_encoding"):
        dataclasses.replace(HYBRID, pos_encoding="learned")
    with pytest.raises(ConfigError, match="ssm_state"):
        ModelConfig(ssm_state=8)  # a Transformer has no SSM
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        dataclasses.replace(PURE, kv_cache_dtype="int8")
    with pytest.raises(ConfigError, match="ssm_attention_every"):
        dataclasses.replace(PURE, ssm_attention_every=3)  # > n_layers: no attention layer
    assert dataclasses.replace(PURE, remat="full").remat == "full"  # honoured by the scan
    with pytest.raises(TypeError, match="SSMCache"):
        eager_forward(PURE, _params(PURE), _tokens(1, 2), cache=object())

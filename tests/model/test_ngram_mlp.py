"""Bengio's neural n-gram model: its equations, its window (causality through gradients,
document boundaries), its cache (incremental equals full, rollback, rows) and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import abstract_params, unembed
from llm.model import forward as eager_forward
from llm.model.cache import init_cache
from llm.model.extras import Extras
from llm.model.ngram_mlp import NgramCache
from tests.model.conftest import make_cfg


def params_for(cfg):
    """Random params of `cfg`'s structure drawn with NumPy (std 0.3, so tanh is not linear):
    skips the seconds XLA takes to compile init_params' random draws."""
    rng = np.random.default_rng(0)
    abstract = abstract_params(cfg)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype), abstract)


# one compile per shape instead of one per op (eager ops dominate on a loaded CPU)
forward = jax.jit(eager_forward, static_argnums=0, static_argnames=("return_hidden_states",))
C = 3
CFG = make_cfg(arch="ngram_mlp", ngram_context=C, tie_embeddings=False, n_layers=1)
DIRECT = make_cfg(arch="ngram_mlp", ngram_context=C, tie_embeddings=False, ngram_direct=True,
                  n_layers=2)  # fmt: skip


def reference_logits(cfg, params, tokens_L, starts=(0,)):
    """The paper's y = b + U tanh(d + H x) (+ W x), written out position by position with
    NumPy: x concatenates the embeddings of tokens t-C+1..t, the empty vector before the
    document that holds t (documents begin at `starts`)."""
    p = jax.tree.map(np.asarray, params)
    out = []
    for t in range(len(tokens_L)):
        start = max(s for s in starts if s <= t)
        slots = [p["token_embed"][tokens_L[j]] if j >= start else p["empty_embed"]
                 for j in range(t - cfg.ngram_context + 1, t + 1)]  # fmt: skip
        x = np.concatenate(slots)
        h = np.tanh(x @ p["hidden_w"].reshape(x.size, -1) + p["hidden_b"])
        for i in range(cfg.n_layers - 1):
            h = np.tanh(h @ p["deep_w"][i] + p["deep_b"][i])
        y = h @ p["lm_head"] + p["lm_bias"]
        if cfg.ngram_direct:
            y = y + x @ p["direct_w"].reshape(x.size, -1)
        out.append(y)
    return np.stack(out)


@pytest.mark.parametrize("cfg", [CFG, DIRECT], ids=["plain", "direct_2layers"])
def test_forward_equals_the_papers_equations(cfg):
    params = params_for(cfg)
    tokens = jax.random.randint(jax.random.key(3), (1, 9), 0, cfg.vocab_size)
    segs = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    out = forward(cfg, params, tokens, segment_ids_BL=segs)
    want = reference_logits(cfg, params, np.asarray(tokens[0]), starts=(0, 4))
    np.testing.assert_allclose(out.logits_BLV[0], want, rtol=1e-5, atol=1e-5)
    # chunked losses compute the logits from hidden_BLD alone
    np.testing.assert_allclose(unembed(cfg, params, out.hidden_BLD), out.logits_BLV, atol=1e-6)


def dependence(cfg, segment_ids_BL, L=9):
    """dep[t, s] = sum |d logits[t] / d embedding[s]|."""
    params = params_for(cfg)
    e_LD = jax.random.normal(jax.random.key(1), (L, cfg.d_model))
    tokens = jnp.zeros((1, L), jnp.int32)

    def logit_sums_L(e_LD):
        out = eager_forward(cfg, params, tokens, segment_ids_BL=segment_ids_BL,
                            input_embeddings_BLD=e_LD[None])  # fmt: skip
        return out.logits_BLV[0].sum(-1)

    return np.asarray(jnp.abs(jax.jit(jax.jacrev(logit_sums_L))(e_LD)).sum(-1))


def test_logit_t_reads_exactly_the_window_of_its_document():
    segs = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0]])
    dep = dependence(DIRECT, segs)
    starts = [0, 0, 0, 0, 0, 5, 5, 5, 8]
    for t in range(9):
        window = {s for s in range(t - C + 1, t + 1) if s >= starts[t]}
        for s in range(9):
            assert (dep[t, s] > 0) == (s in window), (t, s, dep[t])


def test_decoding_with_the_cache_equals_the_full_forward():
    cfg, params = DIRECT, params_for(DIRECT)
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)
    full = forward(cfg, params, tokens).logits_BLV
    cache = init_cache(cfg, 2, 16)
    assert isinstance(cache, NgramCache)
    # a prompt of 3 (row 1 right-padded to 2 tokens), then single tokens
    segs = jnp.array([[1, 1, 1], [1, 1, 0]])
    out = forward(cfg, params, tokens[:, :3], segment_ids_BL=segs, cache=cache)
    np.testing.assert_allclose(out.logits_BLV[0], full[0, :3], atol=1e-5)
    np.testing.assert_allclose(out.logits_BLV[1, :2], full[1, :2], atol=1e-5)
    np.testing.assert_array_equal(out.cache.lengths_B, [3, 2])
    cache = out.cache
    for _ in range(3):
        lengths = np.asarray(cache.lengths_B)
        step_tokens = tokens[jnp.arange(2), cache.lengths_B][:, None]
        out = forward(cfg, params, step_tokens, cache=cache)
        for b in range(2):
            np.testing.assert_allclose(out.logits_BLV[b, 0], full[b, lengths[b]], atol=1e-5)
        cache = out.cache
    np.testing.assert_array_equal(cache.lengths_B, [6, 5])


def test_rollback_select_and_put_rows():
    cfg, params = CFG, params_for(CFG)
    tokens = jax.random.randint(jax.random.key(5), (2, 6), 0, cfg.vocab_size)
    full = forward(cfg, params, tokens).logits_BLV
    cache = forward(cfg, params, tokens, cache=init_cache(cfg, 2, 8)).cache
    back = cache.rollback(jnp.array([3, 9]))  # never extends a row
    np.testing.assert_array_equal(back.lengths_B, [3, 6])
    out = forward(cfg, params, tokens[:, 3:4], cache=back)  # token 3 again from length 3
    np.testing.assert_allclose(out.logits_BLV[0, 0], full[0, 3], atol=1e-5)
    swapped = cache.select_rows(jnp.array([1, 0]))
    np.testing.assert_array_equal(swapped.tokens_BS[0, :6], tokens[1])
    put = init_cache(cfg, 3, 8).put_rows(jnp.array([2, 7]), cache)  # row 7 dropped
    np.testing.assert_array_equal(put.lengths_B, [0, 0, 6])
    np.testing.assert_array_equal(put.tokens_BS[2, :6], tokens[0])
    with pytest.raises(ValueError, match="max_len"):
        cache.put_rows(jnp.array([0]), init_cache(cfg, 1, 4))


def test_tied_output_layer_is_the_embedding():
    cfg = make_cfg(arch="ngram_mlp", ngram_context=2, d_ff=32, n_layers=1)  # d_ff == d_model
    params = params_for(cfg)
    assert "lm_head" not in params
    h = jax.random.normal(jax.random.key(0), (1, 2, 32))
    want = h @ params["token_embed"].T + params["lm_bias"]
    np.testing.assert_allclose(unembed(cfg, params, h), want, atol=1e-5)
    with pytest.raises(ValueError, match="d_ff=48, d_model=32"):
        params_for(make_cfg(arch="ngram_mlp", tie_embeddings=True))


def test_dropout_changes_the_output_and_none_is_deterministic():
    cfg = make_cfg(arch="ngram_mlp", tie_embeddings=False, n_layers=1, embed_dropout=0.5)
    params, tokens = params_for(cfg), jnp.ones((1, 5), jnp.int32)
    plain = forward(cfg, params, tokens).logits_BLV
    dropped = forward(cfg, params, tokens, dropout_key=jax.random.key(0)).logits_BLV
    assert not np.allclose(plain, dropped)
    np.testing.assert_array_equal(plain, forward(cfg, params, tokens).logits_BLV)


def test_refusals_name_what_is_wrong():
    params, tokens = params_for(CFG), jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="return_hidden_states"):
        forward(CFG, params, tokens, return_hidden_states=True)
    with pytest.raises(ValueError, match="prompt tuning"):
        forward(CFG, params, tokens, extras=Extras(prompt_PD=jnp.zeros((2, 32))))
    forward(CFG, params, tokens, extras=Extras())  # an empty Extras is no method
    with pytest.raises(ValueError, match="dropout_key"):
        forward(CFG, params, tokens, cache=init_cache(CFG, 1, 8), dropout_key=jax.random.key(0))
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        init_cache(make_cfg(arch="ngram_mlp", tie_embeddings=False, kv_cache_dtype="int8"), 1, 8)

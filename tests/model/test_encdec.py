"""The T5-style encoder-decoder (`arch: t5`): masks, padding, packing and cached decoding.

Dependence is measured with gradients with respect to the token embedding table: every
token id occurs once, so the gradient at row `tokens[s]` is what output t reads from input
position s. The output layer is untied so that the table enters only through the inputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ConfigError, ModelConfig
from llm.model import encode, forward, init_params, seq2seq_forward, seq2seq_generate
from llm.model.cache import Cache, init_cache
from llm.model.seq2seq import decode_step, start_decoding

CFG = ModelConfig(
    arch="t5", vocab_size=61, d_model=32, n_layers=2, n_decoder_layers=2, n_heads=4, d_ff=48,
    norm="rmsnorm", pos_encoding="none", activation="relu", init_std=0.3, tie_embeddings=False,
    rel_buckets=8, rel_max_distance=12,
)  # fmt: skip
ENC_BS = jnp.array([[3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 0, 0]])
ENC_SEG_BS = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
DEC_BL = jnp.array([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]])


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, enc, dec, enc_seg, dec_seg):
    out = seq2seq_forward(cfg, params, enc, dec, encoder_segment_ids_BS=enc_seg,
                          decoder_segment_ids_BL=dec_seg)  # fmt: skip
    return out.logits_BLV


def logits(params, enc=ENC_BS, dec=DEC_BL, enc_seg=ENC_SEG_BS, dec_seg=None, cfg=CFG):
    dec_seg = jnp.ones(dec.shape, jnp.int32) if dec_seg is None else dec_seg
    return _forward(cfg, params, enc, dec, enc_seg, dec_seg)


def dependence(out_fn, table, in_tokens) -> np.ndarray:
    """dep[t, s] = sum |d (out[t] . r) / d table[in_tokens[s]]| for a random r: what output
    position t reads from input position s (one backward pass per output position)."""
    out = out_fn(table)
    r = jax.random.normal(jax.random.key(3), out.shape[1:])
    J_TVD = jax.jit(jax.jacrev(lambda tbl: (out_fn(tbl) * r).sum(-1)))(table)
    return np.abs(np.asarray(J_TVD)).sum(-1)[:, np.asarray(in_tokens)]


def test_encoder_sees_the_whole_source(params):
    """The mirror of the causality test: every encoder output reads every source token."""
    enc = ENC_BS[:1]

    def out(table):
        return encode(CFG, {**params, "token_embed": table}, enc)[0]

    dep = dependence(out, params["token_embed"], enc[0])
    assert (dep > 1e-6).all(), dep


@pytest.mark.slow  # a vmapped backward through both stacks: the longest compile
def test_decoder_is_causal_and_reads_the_source(params):
    enc, dec = ENC_BS[:1], DEC_BL[:1]

    def out(table):
        return seq2seq_forward(CFG, {**params, "token_embed": table}, enc, dec).logits_BLV[0]

    L = dec.shape[1]
    dep = dependence(out, params["token_embed"], jnp.concatenate([dec[0], enc[0]]))
    future = np.triu(np.ones((L, L), bool), k=1)
    assert (dep[:, :L][future] == 0).all(), dep
    assert (dep[:, :L][~future] > 1e-6).all(), dep
    assert (dep[:, L:] > 1e-6).all()  # cross-attention: every source token


def test_encoder_padding_changes_nothing(params):
    """Row 1's 5 tokens alone, or with 2 (or 6) padding tokens of any id after them."""
    short = logits(params, ENC_BS[1:, :5], DEC_BL[1:], jnp.ones((1, 5), jnp.int32))
    padded = logits(params)[1:]
    more = jnp.concatenate([ENC_BS[1:, :5], jnp.full((1, 6), 42)], axis=1)
    more_seg = jnp.concatenate([jnp.ones((1, 5), jnp.int32), jnp.zeros((1, 6), jnp.int32)], 1)
    # longer keys change XLA's summation order (measured 2e-6 at logits of scale 2.5);
    # a padding key that leaked would move the logits by ~0.1
    np.testing.assert_allclose(padded, short, atol=1e-5)
    np.testing.assert_allclose(logits(params, more, DEC_BL[1:], more_seg), short, atol=1e-5)


def test_decoder_padding_changes_nothing(params):
    dec = jnp.concatenate([DEC_BL, jnp.full((2, 3), 7)], axis=1)
    seg = jnp.concatenate([jnp.ones((2, 6), jnp.int32), jnp.zeros((2, 3), jnp.int32)], axis=1)
    np.testing.assert_allclose(logits(params, dec=dec, dec_seg=seg)[:, :6], logits(params),
                               atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_packed_pairs_equal_separate_pairs(params):
    """Two (source, target) pairs in one row, segments 1 and 2 on both sides."""
    enc = jnp.concatenate([ENC_BS[:1], ENC_BS[1:, :5]], axis=1)
    enc_seg = jnp.array([[1] * 7 + [2] * 5])
    dec = jnp.concatenate([DEC_BL[:1], DEC_BL[1:, :4]], axis=1)
    dec_seg = jnp.array([[1] * 6 + [2] * 4])
    packed = logits(params, enc, dec, enc_seg, dec_seg)[0]
    separate = logits(params)
    np.testing.assert_allclose(packed[:6], separate[0], atol=1e-5)
    np.testing.assert_allclose(packed[6:], separate[1, :4], atol=1e-5)


@pytest.fixture(scope="module")
def stepped(params):
    """(per-step logits [B, L, V] of cached decoding of DEC_BL, the final cache)."""
    step = jax.jit(decode_step, static_argnums=0)
    cache = start_decoding(CFG, params, ENC_BS, ENC_SEG_BS, max_len=DEC_BL.shape[1])
    outs = []
    for t in range(DEC_BL.shape[1]):
        out, cache = step(CFG, params, DEC_BL[:, t : t + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache, step


def test_cached_decoding_equals_full_forward(params, stepped):
    per_step, cache, _ = stepped
    assert isinstance(cache, Cache)
    np.testing.assert_array_equal(cache.lengths_B, [6, 6])
    np.testing.assert_allclose(per_step, logits(params), atol=1e-5, rtol=0)


def test_cache_rollback_and_row_selection(params, stepped):
    per_step, cache, step = stepped
    back = cache.rollback(jnp.array([3, 3]))
    redone = [step(CFG, params, DEC_BL[:, t : t + 1], back)[0] for t in (3,)]
    np.testing.assert_allclose(redone[0][:, 0], per_step[:, 3], atol=1e-6)
    swapped = back.select_rows(jnp.array([1, 0]))
    out = step(CFG, params, DEC_BL[::-1, 3:4], swapped)[0]
    np.testing.assert_allclose(out[:, 0], per_step[::-1, 3], atol=1e-6)
    merged = back.put_rows(jnp.array([0]), swapped.select_rows(jnp.array([1])))
    np.testing.assert_array_equal(merged.cross_k_YBSNH, back.cross_k_YBSNH)


def test_generate_is_greedy_and_fills_after_eos(params):
    generate = jax.jit(seq2seq_generate, static_argnums=0,
                       static_argnames=("max_new_tokens", "start_id", "eos_id"))  # fmt: skip
    gen = generate(CFG, params, ENC_BS, ENC_SEG_BS, max_new_tokens=5, start_id=1, eos_id=None)
    teacher = jnp.concatenate([jnp.ones((2, 1), jnp.int32), gen[:, :-1]], axis=1)
    np.testing.assert_array_equal(gen, jnp.argmax(logits(params, dec=teacher), axis=-1))
    eos = int(gen[0, 1])
    with_eos = generate(CFG, params, ENC_BS, ENC_SEG_BS, max_new_tokens=5, start_id=1, eos_id=eos)
    for row, want in zip(np.asarray(with_eos), np.asarray(gen), strict=True):
        hit = int(np.argmax(want == eos)) if (want == eos).any() else len(want)
        np.testing.assert_array_equal(row[: hit + 1], want[: hit + 1])
        assert (row[hit:] == eos).all()


@pytest.mark.slow
def test_unrolled_layers_equal_the_scan(params):
    import dataclasses

    unrolled = dataclasses.replace(CFG, scan_layers=False, remat="full")
    np.testing.assert_allclose(logits(params, cfg=unrolled), logits(params), atol=1e-6)


def test_decoder_only_entry_points_refuse_t5(params):
    with pytest.raises(ValueError, match="seq2seq_forward"):
        forward(CFG, params, DEC_BL)
    with pytest.raises(ValueError, match="start_decoding"):
        init_cache(CFG, 2, 8)


T5 = dict(arch="t5", pos_encoding="none", norm="rmsnorm")


@pytest.mark.parametrize(
    "fields, key",
    [
        (dict(rel_buckets=16), "rel_buckets"),  # a t5 field on the Transformer
        (dict(n_decoder_layers=2), "n_decoder_layers"),
        ({**T5, "sliding_window": 4}, "sliding_window"),
        ({**T5, "pos_encoding": "rope"}, "pos_encoding"),
        ({**T5, "norm": "layernorm"}, "norm"),
        ({**T5, "n_kv_heads": 1}, "n_kv_heads"),
        ({**T5, "attention_impl": "pallas"}, "attention_impl"),
        ({**T5, "rel_max_distance": 8}, "rel_max_distance"),
        ({**T5, "tie_embeddings": False, "scale_decoder_output": False}, "scale_decoder_output"),
    ],
)
def test_config_refuses_what_t5_would_ignore(fields, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**fields)

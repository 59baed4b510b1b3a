"""Incremental decoding over the KV cache gives the logits of a full forward pass; the
cache protocol's operations, and that inference code uses nothing else of the cache."""

import ast
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llm.inference
from llm.config import ModelConfig
from llm.model import abstract_params, forward
from llm.model import cache as cache_mod
from llm.model.cache import Cache
from llm.model.kv_cache import KVCache, init_cache

BASE = ModelConfig(
    vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32, init_std=0.3
)
VARIANTS = {
    "learned": dict(pos_encoding="learned"),
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "rope_gqa": dict(pos_encoding="rope", n_kv_heads=2, qk_norm=True),
    "rope_mqa_window": dict(pos_encoding="rope", n_kv_heads=1, sliding_window=3),
    "alibi_window": dict(pos_encoding="alibi", sliding_window=4, attn_logit_softcap=5.0),
    "none_postnorm": dict(pos_encoding="none", norm_placement="post"),
}
LENGTHS = (5, 2)  # ragged prompts, right-padded to 5 in one prefill
STEPS = 6  # decode steps after the prefill
TOKENS_BL = np.asarray(jax.random.randint(jax.random.key(1), (2, 5 + STEPS), 0, 61))


def random_params(cfg):
    """Any parameters will do for parity; NumPy draws avoid compiling jax's initialiser."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), abstract_params(cfg)
    )


def incremental_logits(cfg, params):
    """Logits of each row's tokens, computed by a ragged prefill then single-token steps."""
    P = max(LENGTHS)
    seg = (np.arange(P)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    prompt = np.where(seg > 0, TOKENS_BL[:, :P], 0)
    step = jax.jit(lambda p, t, s, c: forward(cfg, p, t, segment_ids_BL=s, cache=c))
    out = step(params, jnp.asarray(prompt), jnp.asarray(seg), init_cache(cfg, 2, 16))
    rows = [[out.logits_BLV[b, t] for t in range(n)] for b, n in enumerate(LENGTHS)]
    cache, ones = out.cache, jnp.ones((2, 1), jnp.int32)
    for k in range(STEPS):
        nxt = jnp.asarray([TOKENS_BL[b, n + k] for b, n in enumerate(LENGTHS)])[:, None]
        out = step(params, nxt, ones, cache)
        cache = out.cache
        for b in range(2):
            rows[b].append(out.logits_BLV[b, 0])
    np.testing.assert_array_equal(cache.lengths_B, np.array(LENGTHS) + STEPS)
    return [jnp.stack(r) for r in rows]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_incremental_matches_full_forward(name):
    cfg = dataclasses.replace(BASE, **VARIANTS[name])
    params = random_params(cfg)
    full_forward = jax.jit(lambda p, t: forward(cfg, p, t).logits_BLV)
    for b, (n, got) in enumerate(zip(LENGTHS, incremental_logits(cfg, params), strict=True)):
        full = full_forward(params, jnp.asarray(TOKENS_BL[b : b + 1, : n + STEPS]))[0]
        np.testing.assert_allclose(got, full, atol=2e-5, rtol=1e-5, err_msg=f"{name} row {b}")


def test_cache_rejects_positions():
    cfg = dataclasses.replace(BASE, n_layers=1)
    with pytest.raises(ValueError, match="positions_BL"):
        forward(cfg, {}, jnp.zeros((1, 1), jnp.int32), positions_BL=jnp.zeros((1, 1), jnp.int32),
                cache=init_cache(cfg, 1, 4))  # fmt: skip


def numbered_cache(batch: int, max_len: int = 4) -> KVCache:
    """A KVCache whose entries name their row (k: row + 1, v: -(row + 1)), lengths row + 1."""
    cfg = dataclasses.replace(BASE, n_layers=2)
    empty = init_cache(cfg, batch, max_len)
    rows_B = jnp.arange(1, batch + 1, dtype=jnp.float32)[None, :, None, None, None]
    return KVCache(empty.k_YBKSH + rows_B, empty.v_YBKSH - rows_B,
                   jnp.arange(1, batch + 1, dtype=jnp.int32))  # fmt: skip


def row_ids(cache: KVCache) -> list[int]:
    ids = np.asarray(cache.k_YBKSH[0, :, 0, 0, 0]).astype(int).tolist()
    assert (np.asarray(cache.v_YBKSH) == -np.asarray(cache.k_YBKSH)).all()  # moved together
    return ids


def test_kv_cache_implements_the_protocol():
    assert isinstance(numbered_cache(2), Cache)
    assert isinstance(cache_mod.init_cache(BASE, 2, 8), KVCache)


def test_select_rows_gathers_in_order_with_repeats():
    picked = numbered_cache(3).select_rows(jnp.asarray([2, 0, 2, 2]))
    assert row_ids(picked) == [3, 1, 3, 3]
    assert picked.lengths_B.tolist() == [3, 1, 3, 3]


def test_put_rows_scatters_and_drops_out_of_range():
    big, small = numbered_cache(4), numbered_cache(3).select_rows(jnp.asarray([2, 1, 0]))
    out = big.put_rows(jnp.asarray([1, 4, 3]), small)  # row 4 does not exist: dropped
    assert row_ids(out) == [1, 3, 3, 1]
    assert out.lengths_B.tolist() == [1, 3, 3, 1]
    with pytest.raises(ValueError, match="max_len"):
        big.put_rows(jnp.asarray([0]), numbered_cache(1, max_len=8))


def test_rollback_forgets_and_never_extends():
    cache = numbered_cache(3)  # lengths 1, 2, 3
    out = cache.rollback(jnp.asarray([0, 5, 1]))
    assert out.lengths_B.tolist() == [0, 2, 1]
    assert row_ids(out) == [1, 2, 3]  # entries stay; lengths alone mask them


def test_rollback_then_decode_overwrites_the_forgotten_tokens():
    """After a rollback the next tokens continue from the kept prefix, as if the rolled-back
    ones had never been fed: the logits equal those of a cache that never saw them."""
    cfg = dataclasses.replace(BASE, pos_encoding="rope")
    params = random_params(cfg)
    step = jax.jit(lambda p, t, c: forward(cfg, p, t, cache=c))
    tokens = jnp.asarray(TOKENS_BL[:1, :7])
    clean = step(params, tokens[:, :4], init_cache(cfg, 1, 16)).cache
    dirty = step(params, tokens[:, 4:7], clean).cache.rollback(jnp.asarray([4]))
    nxt = jnp.asarray(TOKENS_BL[:1, 7:8])
    np.testing.assert_array_equal(step(params, nxt, dirty).logits_BLV,
                                  step(params, nxt, clean).logits_BLV)  # fmt: skip


def test_inference_reaches_the_cache_only_through_the_protocol():
    """The engine and the decoders built on it name no `KVCache` internals: no field outside
    the protocol is read, no field is replaced, no KVCache is built, kv_cache is not imported."""
    members = {n for n in dir(Cache) if not n.startswith("_")}
    fields = {f.name for f in dataclasses.fields(KVCache)}
    inference = Path(llm.inference.__file__).parent
    for name in ("engine", "speculative", "beam", "scheduler", "ngram_draft", "stream"):
        tree = ast.parse((inference / f"{name}.py").read_text())
        for node in ast.walk(tree):
            where = f"llm/inference/{name}.py:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in fields - members, where
            if isinstance(node, ast.Name):
                assert node.id != "KVCache", where
            if isinstance(node, ast.keyword):
                assert node.arg not in fields, where
            if isinstance(node, ast.ImportFrom):
                assert node.module != "llm.model.kv_cache", where

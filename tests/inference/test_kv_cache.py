"""Incremental decoding over the KV cache gives the logits of a full forward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config import ModelConfig
from llm.model import abstract_params, forward
from llm.model.kv_cache import init_cache

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

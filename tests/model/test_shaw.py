"""Shaw et al. 2018 relative position representations (`model.pos_encoding=shaw`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config.base import ConfigError
from llm.interop.hf_config import UnsupportedConfig, hf_model_type
from llm.model import forward
from llm.model.kv_cache import init_cache
from llm.ops.attention import attention
from tests.model.conftest import make_cfg, params_for

CFG = make_cfg(pos_encoding="shaw", shaw_max_distance=3)
SEG = [1] * 6 + [2] * 4
POS = list(range(6)) + list(range(4))


def paper_loop(q, k, v, wk, wv, seg, pos, max_distance):
    """Eqs. 3-4 of arXiv:1803.02155 one (i, j) pair at a time, causal, per head; kv head of
    query head n is n // (N / K). q [L, N, H], k, v [L, K, H], wk, wv [2k + 1, H]."""
    L, N, H = q.shape
    G = N // k.shape[1]
    out = np.zeros((L, N, H))
    for n in range(N):
        for i in range(L):
            visible = [j for j in range(L) if seg[j] == seg[i] and pos[j] <= pos[i]]
            e, values = [], []
            for j in visible:
                idx = max(-max_distance, min(max_distance, pos[j] - pos[i])) + max_distance
                e.append(q[i, n] @ (k[j, n // G] + wk[idx]) / np.sqrt(H))
                values.append(v[j, n // G] + wv[idx])
            alpha = np.exp(np.array(e) - max(e))
            out[i, n] = (alpha / alpha.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize("N, K", [(4, 4), (4, 2)])
def test_attention_equals_the_papers_equations(N, K):
    keys = jax.random.split(jax.random.key(0), 5)
    L, H, kmax = len(SEG), 8, 2
    q = jax.random.normal(keys[0], (1, L, N, H))
    k, v = (jax.random.normal(key, (1, L, K, H)) for key in keys[1:3])
    wk, wv = (jax.random.normal(key, (2 * kmax + 1, H)) for key in keys[3:5])
    ids = dict(q_segment_ids_BL=jnp.asarray([SEG]), q_positions_BL=jnp.asarray([POS]))
    got = attention(q, k, v, **ids, shaw_tables=(wk, wv), impl="xla")
    want = paper_loop(*(np.asarray(a[0], np.float64) for a in (q, k, v)), np.asarray(wk),
                      np.asarray(wv), SEG, POS, kmax)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got[0]), want, atol=2e-5, rtol=0)


def test_other_backends_refuse_shaw():
    q = jnp.ones((1, 4, 2, 8))
    tables = (jnp.ones((5, 8)), jnp.ones((5, 8)))
    for impl in ("xla_flash", "jax", "pallas"):
        with pytest.raises(ValueError, match=f"Shaw relative positions is not supported .*{impl}"):
            attention(q, q, q, shaw_tables=tables, impl=impl)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 10), 0, 61)


def test_translation_invariance(tokens):
    """Only distances enter: shifting every position by 7 changes nothing; the tables do
    matter (zeroing them changes the logits)."""
    params = params_for(CFG)
    run = jax.jit(lambda p, pos: forward(CFG, p, tokens, positions_BL=pos).logits_BLV)
    positions = jnp.arange(10)[None].repeat(2, 0)
    base = run(params, positions)
    np.testing.assert_allclose(run(params, positions + 7), base, atol=1e-6, rtol=0)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 0 if "shaw" in jax.tree_util.keystr(path) else a, params
    )
    assert float(jnp.abs(run(zeroed, positions) - base).max()) > 1e-3


def test_cached_decode_equals_full_forward(tokens):
    params = params_for(CFG)
    full = forward(CFG, params, tokens).logits_BLV
    step = jax.jit(lambda p, t, c: forward(CFG, p, t, cache=c))
    out = step(params, tokens[:, :6], init_cache(CFG, 2, 16))
    logits = [out.logits_BLV]
    for t in range(6, 10):
        out = step(params, tokens[:, t : t + 1], out.cache)
        logits.append(out.logits_BLV)
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, atol=2e-5, rtol=0)


def test_each_layer_learns_two_tables():
    shapes = jax.tree.map(lambda a: a.shape, params_for(CFG)["blocks"]["attn"]["shaw"])
    assert shapes == {"k_RH": (2, 7, 8), "v_RH": (2, 7, 8)}  # (layers, 2k + 1, head_dim)


def test_refusals_name_the_switch(tokens):
    with pytest.raises(ConfigError, match="attention_impl"):
        make_cfg(pos_encoding="shaw", attention_impl="xla_flash")
    with pytest.raises(ConfigError, match="shaw_max_distance"):
        make_cfg(shaw_max_distance=4)  # read only by pos_encoding shaw
    with pytest.raises(ConfigError, match="shaw_max_distance"):
        make_cfg(pos_encoding="shaw", shaw_max_distance=0)
    with pytest.raises(ValueError, match="return_attention: pos_encoding shaw"):
        forward(CFG, params_for(CFG), tokens, return_attention=True)
    with pytest.raises(UnsupportedConfig, match="pos_encoding='shaw'"):
        hf_model_type(CFG)


@pytest.mark.parametrize(
    "rule", [dict(pattern="strided", pattern_block=2), dict(kv_prefix_BS=jnp.arange(8)[None] < 3)]
)
def test_auto_runs_shaw_with_mask_rules_in_xla(rule):
    """Shaw with a sparse pattern or prefix-LM under impl=auto runs in xla (xla_flash,
    which the mask rules pick otherwise, has no Shaw term), and the rule is applied."""
    keys = jax.random.split(jax.random.key(2), 5)
    q, k, v = (jax.random.normal(key, (1, 8, 2, 8)) for key in keys[:3])
    tables = tuple(jax.random.normal(key, (5, 8)) for key in keys[3:])
    got = attention(q, k, v, shaw_tables=tables, impl="auto", **rule)
    np.testing.assert_array_equal(got, attention(q, k, v, shaw_tables=tables, **rule))
    plain = attention(q, k, v, shaw_tables=tables)
    assert float(jnp.abs(got - plain).max()) > 1e-3  # the mask rule changed what is seen

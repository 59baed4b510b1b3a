"""The model with sparse attention patterns (`model.attention_pattern`, Child et al. 2019)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config.base import ConfigError
from llm.interop.hf_config import UnsupportedConfig, check_transformer
from llm.model import forward
from llm.model.kv_cache import init_cache
from tests.model.conftest import make_cfg, params_for

L = 12


def _tokens():
    return jax.random.randint(jax.random.key(1), (2, L), 0, 61)


@pytest.mark.parametrize("pattern", ["strided", "block_local"])
def test_one_layer_reads_only_its_pattern(pattern):
    """In one layer, d logits[i] / d input[j] is nonzero exactly for the keys the pattern
    lets query i see (the residual carries j = i itself)."""
    cfg = make_cfg(n_layers=1, attention_pattern=pattern, attention_block=3,
                   attention_impl="xla_flash")  # fmt: skip
    params = params_for(cfg)
    x_BLD = jax.random.normal(jax.random.key(2), (1, L, cfg.d_model))
    tokens = jnp.zeros((1, L), jnp.int32)

    def logits_L(x):
        return forward(cfg, params, tokens, input_embeddings_BLD=x).logits_BLV[0].sum(-1)

    jac_LLD = jax.jit(jax.jacrev(logits_L))(x_BLD)[:, 0]
    seen_LL = np.asarray(jnp.abs(jac_LLD).sum(-1) > 0)
    d_LL = np.arange(L)[:, None] - np.arange(L)[None]
    if pattern == "strided":
        want_LL = (d_LL >= 0) & ((d_LL < 3) | (d_LL % 3 == 0))
    else:
        want_LL = (d_LL >= 0) & (np.arange(L)[:, None] // 3 == np.arange(L)[None] // 3)
    np.testing.assert_array_equal(seen_LL, want_LL)


@pytest.mark.parametrize("pattern", ["strided", "block_local"])
def test_cached_decode_equals_full_forward(pattern):
    """A 5-token prompt, then one token per step: the cache applies the same
    position-based rule, so every step's logits equal the full forward's."""
    cfg = make_cfg(attention_pattern=pattern, attention_block=3)
    params = params_for(cfg)
    tokens = _tokens()
    full = forward(cfg, params, tokens).logits_BLV
    step = jax.jit(lambda p, t, c: forward(cfg, p, t, cache=c))
    out = step(params, tokens[:, :5], init_cache(cfg, 2, 16))
    steps = [out.logits_BLV]
    for t in range(5, L):
        out = step(params, tokens[:, t : t + 1], out.cache)
        steps.append(out.logits_BLV)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5, rtol=0)
    dense = forward(make_cfg(), params, tokens).logits_BLV
    assert float(jnp.abs(dense - full)[:, 4:].max()) > 1e-3  # the pattern changed something


def test_switches_are_validated_by_name():
    with pytest.raises(ConfigError, match="attention_block"):
        make_cfg(attention_block=4)  # dense ignores it
    with pytest.raises(ConfigError, match="attention_block"):
        make_cfg(attention_pattern="strided", attention_block=0)
    with pytest.raises(ConfigError, match="attention_pattern"):
        make_cfg(attention_pattern="strided", attention_impl="pallas")
    with pytest.raises(ConfigError, match="attention_pattern"):
        make_cfg(arch="lstm", attention_pattern="block_local")


def test_export_refuses_a_sparse_pattern():
    with pytest.raises(UnsupportedConfig, match="attention_pattern='strided'"):
        check_transformer(make_cfg(attention_pattern="strided"), "Hugging Face export")

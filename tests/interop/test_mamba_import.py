"""Import of `transformers`' MambaForCausalLM (tiny, random, float32; its slow torch path runs
on CPU without the CUDA kernels): logits equal, cached decoding equals, export round-trips.

Every parameter is redrawn (hf_models.randomize: norms around 1, the rest N(0, 0.15)), so a
conv bias, dt bias, D or norm weight put in the wrong place shows. Two variants: tied
embeddings with a large RMSNorm epsilon (1e-2, so a dropped `layer_norm_epsilon` shows) and
an untied lm_head with the default epsilon and a non-default time_step_rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import VOCAB, hf_logits, max_rel_err, randomize, save_hf

from llm.checkpoint import load_model
from llm.cli import main
from llm.interop import UnsupportedConfig, export_hf, model_config_from_hf
from llm.model import forward
from llm.model.cache import init_cache

IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)).astype(np.int32)
VARIANTS = {
    "tied": dict(tie_word_embeddings=True, layer_norm_epsilon=1e-2),
    "untied": dict(tie_word_embeddings=False, time_step_rank=3),
}


def _hf_mamba(variant: str):
    import torch
    import transformers as T

    torch.manual_seed(0)
    config = T.MambaConfig(
        vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=4,
        expand=2, **VARIANTS[variant],
    )  # fmt: skip
    model = T.MambaForCausalLM(config).to(torch.float32)
    randomize(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def imported(request, tmp_path_factory):
    model = _hf_mamba(request.param)
    hf_dir = save_hf(model, tmp_path_factory.mktemp(f"hf_mamba_{request.param}"))
    out = tmp_path_factory.mktemp(f"ours_mamba_{request.param}")
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) == 0  # `llm convert from-hf`
    m = load_model(out)
    return request.param, model, hf_dir, m


def test_config_maps_every_field(imported):
    variant, model, _, m = imported
    cfg, hf = m.config.model, model.config
    assert (cfg.arch, cfg.norm, cfg.d_model, cfg.n_layers) == ("mamba", "rmsnorm", 32, 2)
    assert (cfg.ssm_state, cfg.ssm_conv, cfg.ssm_expand) == (8, 4, 2)
    assert cfg.ssm_dt_rank == hf.time_step_rank and cfg.norm_eps == hf.layer_norm_epsilon
    assert cfg.tie_embeddings == (variant == "tied")


def test_logits_match_transformers(imported):
    variant, model, _, m = imported
    ours = np.asarray(jax.jit(forward, static_argnums=0)(m.config.model, m.params, IDS).logits_BLV)
    err = max_rel_err(ours, hf_logits(model, IDS))
    assert err < 1e-5, f"{variant}: max relative logit error {err:.2e}"


def test_cached_decode_matches_transformers(imported):
    """Prefill 5 tokens into the cache, then one token per step: each step's logits equal
    transformers' full forward at that position."""
    variant, model, _, m = imported
    cfg, params = m.config.model, m.params
    step = jax.jit(lambda c, t: forward(cfg, params, t, cache=c))
    out = step(init_cache(cfg, 2, 16), jnp.asarray(IDS[:, :5]))
    logits = [out.logits_BLV]
    cache = out.cache
    for t in range(5, IDS.shape[1]):
        out = step(cache, jnp.asarray(IDS[:, t : t + 1]))
        cache = out.cache
        logits.append(out.logits_BLV)
    err = max_rel_err(np.concatenate(logits, axis=1), hf_logits(model, IDS))
    assert err < 1e-5, f"{variant}: cached decode vs transformers {err:.2e}"


def test_export_round_trip_is_bitwise(imported, tmp_path):
    from safetensors.numpy import load_file

    _, _, hf_dir, m = imported
    export_hf(
        m.config.model, m.params, tmp_path / "hf", tokenizer=m.tokenizer, tokenizer_dir=hf_dir
    )
    original = load_file(str(hf_dir / "model.safetensors"))
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(exported) == set(original) or set(exported) == set(original) - {"lm_head.weight"}
    for name, w in exported.items():
        assert w.dtype == original[name].dtype and np.array_equal(w, original[name]), name


def test_unsupported_fields_are_refused_by_name():
    base = dict(model_type="mamba", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2)
    with pytest.raises(UnsupportedConfig, match="use_bias"):
        model_config_from_hf(base | dict(use_bias=True))
    with pytest.raises(UnsupportedConfig, match="residual_in_fp32"):
        model_config_from_hf(base | dict(residual_in_fp32=False))
    with pytest.raises(UnsupportedConfig, match="mystery"):
        model_config_from_hf(base | dict(mystery=1))

"""config.json <-> ModelConfig: both RoPE spellings, strictness on unknown fields, round trips."""

from __future__ import annotations

import json

import pytest
from hf_models import ARCHS, hf_config

from llm.config import ModelConfig
from llm.interop.hf_config import (
    UnsupportedConfig,
    hf_config_from_model,
    hf_model_type,
    model_config_from_hf,
)


def saved_dict(arch: str) -> dict:
    """config.json exactly as transformers writes it."""
    return json.loads(hf_config(arch).to_json_string())


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trips_through_hf(arch):
    cfg = model_config_from_hf(saved_dict(arch))
    assert hf_model_type(cfg) == arch
    again = model_config_from_hf(hf_config_from_model(cfg, {"bos": 1, "eos": 2, "pad": None}))
    assert again == cfg


def test_shapes_map_to_our_fields():
    cfg = model_config_from_hf(saved_dict("qwen3"))
    assert (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size) == (32, 4, 2, 16)
    assert cfg.qk_norm and not cfg.qkv_bias and cfg.activation == "swiglu"
    assert model_config_from_hf(saved_dict("qwen2")).qkv_bias
    assert not model_config_from_hf(saved_dict("qwen2")).out_bias
    assert model_config_from_hf(saved_dict("mistral")).sliding_window == 6
    gpt2 = model_config_from_hf(saved_dict("gpt2"))
    assert (gpt2.pos_encoding, gpt2.activation, gpt2.d_ff) == ("learned", "gelu_tanh", 128)


def test_old_top_level_rope_theta_and_rope_scaling_are_read():
    new = saved_dict("llama")
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    params = dict(new["rope_parameters"])
    old["rope_theta"] = params.pop("rope_theta")
    old["rope_scaling"] = params  # transformers 4 spelling
    assert model_config_from_hf(old) == model_config_from_hf(new)
    cfg = model_config_from_hf(new)
    assert (cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_original_max_len) == (
        "llama3",
        8.0,
        32,
    )
    linear = dict(old, rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    cfg = model_config_from_hf(linear)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_scaling_factor) == (5e5, "linear", 2.0)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "gemma"}, "'gemma'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "yarn"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
        ({"rope_interleaved": True}, "rope_interleaved"),
    ],
)
def test_unsupported_fields_fail_naming_them(change, named):
    with pytest.raises(UnsupportedConfig, match=named):
        model_config_from_hf(saved_dict("llama") | change, source="x/config.json")


def test_mixed_sliding_layers_are_refused():
    bad = saved_dict("qwen2") | {"use_sliding_window": True, "sliding_window": 4}
    bad["layer_types"] = ["full_attention", "sliding_attention"]
    with pytest.raises(UnsupportedConfig, match="mixed layer_types"):
        model_config_from_hf(bad)


def test_gpt2_attention_variants_are_refused():
    bad = saved_dict("gpt2") | {"scale_attn_by_inverse_layer_idx": True}
    with pytest.raises(UnsupportedConfig, match="scale_attn_by_inverse_layer_idx"):
        model_config_from_hf(bad)


def test_transformers_4_style_config_is_read():
    """Top-level rope_theta, `rope_scaling: null`, torch_dtype and SmolLM-style extra flags."""
    old = {k: v for k, v in saved_dict("llama").items() if k != "rope_parameters"}
    old |= dict(rope_theta=1e5, rope_scaling=None, torch_dtype="bfloat16", rope_interleaved=False)
    old |= {"is_llama_config": True, "transformers.js_config": {}}
    cfg = model_config_from_hf(old)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.param_dtype) == (1e5, "none", "float32")


def test_a_model_without_residual_connections_is_not_exported():
    # every Hugging Face / GGUF architecture adds the blocks' outputs to the stream
    cfg = ModelConfig(pos_encoding="rope", norm="rmsnorm", activation="swiglu", residual=False)
    with pytest.raises(UnsupportedConfig, match=r"model\.residual=false"):
        hf_model_type(cfg)

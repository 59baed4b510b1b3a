"""Hugging Face `config.json` <-> our `ModelConfig`, for Llama, Mistral, Qwen2, Qwen3 and GPT-2.

Reading is strict: every key of `config.json` is either mapped to a field of ours, checked to
hold the one value we support, or listed in `IGNORED` as metadata that does not change the
computation. Anything else is an error naming the key, so a config field we do not model can
never produce a silently different network.

RoPE settings come in two spellings: files written by transformers < 5 carry a top-level
`rope_theta` and an optional `rope_scaling` dict; transformers 5 writes a `rope_parameters`
dict holding `rope_theta` and the scaling. Both are read; we write the newer one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llm.config import ModelConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED = (*LLAMA_FAMILY, "gpt2")

# Keys that describe the file, the tokenizer or the training, not the forward computation.
IGNORED = frozenset(
    """transformers_version architectures output_hidden_states output_attentions return_dict
    dtype torch_dtype chunk_size_feed_forward is_encoder_decoder id2label label2id problem_type
    initializer_range use_cache pad_token_id bos_token_id eos_token_id _name_or_path model_type
    pretraining_tp summary_type summary_use_proj summary_activation summary_proj_to_labels
    summary_first_dropout n_ctx max_window_layers tokenizer_class task_specific_params
    reorder_and_upcast_attn _attn_implementation_autoset _attn_implementation is_llama_config
    transformers.js_config""".split()
)
# Per model_type: keys the importer checks hold exactly this value (anything else: error).
REQUIRED_VALUES: dict[str, dict[str, Any]] = {
    "llama": {"rope_interleaved": False},  # SmolLM's config.json states the HF RoPE layout
    "gpt2": {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    },
}
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
ROPE_KEYS = {
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
}


class UnsupportedConfig(ValueError):
    """The checkpoint uses an architecture or a config field we do not implement."""


# Families kept in their own modules (llm/interop/hf_<family>.py) import this one, so they
# register here (on import of llm.interop) instead of being imported: no import cycle.
# model_type -> reader(hf dict, source, param_dtype), asked before SUPPORTED:
FAMILY_READERS: dict[str, Callable[[Mapping[str, Any], str, str], ModelConfig]] = {}
# export: each returns the model_type that computes cfg, or None when cfg is not its family:
FAMILY_TYPES: list[Callable[[ModelConfig], str | None]] = []
# export: model_type -> config.json keys of cfg (the common keys are added by the caller):
FAMILY_WRITERS: dict[str, Callable[[ModelConfig], dict[str, Any]]] = {}


class _Fields:
    """A config dict whose keys are consumed one by one, so leftovers can be reported."""

    def __init__(self, data: Mapping[str, Any], source: str):
        self.data, self.source, self.used = dict(data), source, set()

    def take(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is ...:
            raise UnsupportedConfig(f"{self.source}: required key {key!r} is missing")
        return default

    def require(self, key: str, value: Any) -> None:
        found = self.take(key, value)
        if found != value:
            raise UnsupportedConfig(
                f"{self.source}: {key}={found!r} is not supported (only {value!r})"
            )

    def leftovers(self) -> list[str]:
        return sorted(k for k in self.data if k not in self.used and k not in IGNORED)


def model_config_from_hf(
    hf: Mapping[str, Any], *, source: str = "config.json", param_dtype: str = "float32"
) -> ModelConfig:
    """Our ModelConfig for a Hugging Face config dict; UnsupportedConfig names what we lack."""
    model_type = hf.get("model_type")
    if model_type in FAMILY_READERS:
        return FAMILY_READERS[model_type](hf, source=source, param_dtype=param_dtype)
    if model_type not in SUPPORTED:
        raise UnsupportedConfig(
            f"{source}: model_type {model_type!r} is not supported; supported: {SUPPORTED}"
        )
    fields = _Fields(hf, source)
    for key, value in REQUIRED_VALUES.get(model_type, {}).items():
        fields.require(key, value)
    reader = _gpt2_fields if model_type == "gpt2" else _llama_fields
    kwargs = reader(fields, model_type)
    if leftover := fields.leftovers():
        raise UnsupportedConfig(
            f"{source}: config field(s) {leftover} of model_type {model_type!r} are not "
            "supported; if one does not change the computation, add it to IGNORED in "
            "llm/interop/hf_config.py"
        )
    dtype = param_dtype
    return ModelConfig(**kwargs, dtype=dtype, param_dtype=dtype, init_std=_init_std(fields))


def _init_std(fields: _Fields) -> float:
    return float(fields.data.get("initializer_range", 0.02))


def _llama_fields(f: _Fields, model_type: str) -> dict[str, Any]:
    d_model, n_heads = f.take("hidden_size"), f.take("num_attention_heads")
    f.require("hidden_act", "silu")
    f.take("attention_dropout", 0.0)
    bias = bool(f.take("attention_bias", False))
    out = dict(
        vocab_size=f.take("vocab_size"),
        d_model=d_model,
        n_layers=f.take("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=f.take("num_key_value_heads", None) or n_heads,
        head_dim=f.take("head_dim", None) or d_model // n_heads,
        d_ff=f.take("intermediate_size"),
        max_seq_len=f.take("max_position_embeddings"),
        activation="swiglu",
        norm="rmsnorm",
        norm_eps=float(f.take("rms_norm_eps")),
        norm_bias=False,
        pos_encoding="rope",
        qkv_bias=bias or model_type == "qwen2",  # Qwen2 always has q/k/v biases, no o bias
        out_bias=bias,
        mlp_bias=bool(f.take("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(f.take("tie_word_embeddings", False)),
        sliding_window=_sliding_window(f, model_type),
        scale_residual_init=False,
    )
    return out | _rope(f)


def _sliding_window(f: _Fields, model_type: str) -> int | None:
    """Mistral: one window for all layers. Qwen2/3: only when every layer uses it."""
    window = f.take("sliding_window", None)
    if model_type == "llama":
        return None
    if model_type == "mistral":
        return window
    use = bool(f.take("use_sliding_window", False))
    kinds = set(f.take("layer_types", None) or [])
    if kinds - {"full_attention", "sliding_attention"}:
        raise UnsupportedConfig(f"{f.source}: layer_types {sorted(kinds)} are not supported")
    if not use:
        if "sliding_attention" in kinds:
            raise UnsupportedConfig(f"{f.source}: layer_types has sliding layers without window")
        return None
    if kinds != {"sliding_attention"}:
        raise UnsupportedConfig(
            f"{f.source}: use_sliding_window with mixed layer_types (max_window_layers) is not "
            "supported: our model uses one attention window for every layer"
        )
    return window


def _rope(f: _Fields) -> dict[str, Any]:
    """RoPE fields from either `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
    params = dict(f.take("rope_parameters", None) or {})
    scaling = f.take("rope_scaling", None)
    if scaling:
        params |= {k: v for k, v in scaling.items() if k not in params}
    top_theta = f.take("rope_theta", None)
    if unknown := sorted(set(params) - ROPE_KEYS):
        raise UnsupportedConfig(f"{f.source}: rope parameter(s) {unknown} are not supported")
    theta = params.get("rope_theta", top_theta)
    kind = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = {"rope_theta": float(10000.0 if theta is None else theta)}
    if kind == "default":
        return out
    if kind == "linear":
        return out | {"rope_scaling": "linear", "rope_scaling_factor": float(params["factor"])}
    if kind == "llama3":
        return out | {
            "rope_scaling": "llama3",
            "rope_scaling_factor": float(params["factor"]),
            "rope_low_freq_factor": float(params["low_freq_factor"]),
            "rope_high_freq_factor": float(params["high_freq_factor"]),
            "rope_original_max_len": int(params["original_max_position_embeddings"]),
        }
    raise UnsupportedConfig(
        f"{f.source}: rope_type {kind!r} is not supported (only default, linear, llama3)"
    )


def _gpt2_fields(f: _Fields, model_type: str) -> dict[str, Any]:
    d_model = f.take("n_embd")
    act = f.take("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise UnsupportedConfig(f"{f.source}: activation_function {act!r} is not supported")
    return dict(
        vocab_size=f.take("vocab_size"),
        d_model=d_model,
        n_layers=f.take("n_layer"),
        n_heads=f.take("n_head"),
        d_ff=f.take("n_inner", None) or 4 * d_model,
        max_seq_len=f.take("n_positions"),
        activation=GPT2_ACTIVATIONS[act],
        norm="layernorm",
        norm_eps=float(f.take("layer_norm_epsilon", 1e-5)),
        norm_bias=True,
        pos_encoding="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(f.take("tie_word_embeddings", True)),
        embed_dropout=float(f.take("embd_pdrop", 0.0)),
        attn_dropout=float(f.take("attn_pdrop", 0.0)),
        resid_dropout=float(f.take("resid_pdrop", 0.0)),
    )


def check_transformer(cfg: ModelConfig, what: str) -> None:
    """Refuses the classical baselines (`model.arch`): the formats we write (Hugging Face
    GPT-2 / Llama, GGUF llama) are Transformers, and no reader would compute the baseline."""
    if cfg.arch != "transformer":
        raise UnsupportedConfig(
            f"{what} writes Transformer architectures (GPT-2, Llama); model.arch="
            f"{cfg.arch!r} has no such counterpart: keep the checkpoint in our format"
        )
    if not cfg.residual:
        raise UnsupportedConfig(
            f"{what}: model.residual=false has no counterpart (every exported architecture "
            "adds its blocks' outputs to the residual stream): keep the checkpoint in our format"
        )
    check_mask_rules(cfg, what)
    plain = dict(causal=True, embed_norm=False, type_vocab_size=0)  # BERT's parts
    if found := [f"{k}={getattr(cfg, k)!r}" for k, v in plain.items() if getattr(cfg, k) != v]:
        raise UnsupportedConfig(
            f"{what}: {found} have no counterpart in a causal Transformer (GPT-2, Llama; an "
            "encoder exports only in BERT's layout): keep the checkpoint in our format"
        )


def check_mask_rules(cfg: ModelConfig, what: str) -> None:
    """Refuses attention masks no exported architecture applies (sparse patterns, prefix-LM)."""
    for key, plain in (("attention_pattern", "dense"), ("prefix_lm", False)):
        if getattr(cfg, key) != plain:
            raise UnsupportedConfig(
                f"{what}: model.{key}={getattr(cfg, key)!r} has no counterpart (no exported "
                "architecture applies this mask rule): keep the checkpoint in our format"
            )


def hf_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face architecture that computes exactly what `cfg` computes."""
    check_mask_rules(cfg, "Hugging Face export")  # before any family claims the layout
    for family_type in FAMILY_TYPES:
        if (model_type := family_type(cfg)) is not None:
            return model_type
    check_transformer(cfg, "Hugging Face export")
    if _is_gpt2(cfg):
        return "gpt2"
    problems = [
        f"{k}={getattr(cfg, k)!r} (needs {v!r})"
        for k, v in dict(
            pos_encoding="rope", norm="rmsnorm", norm_placement="pre", activation="swiglu"
        ).items()
        if getattr(cfg, k) != v
    ]
    problems += [f"{k} is set" for k in ("attn_logit_softcap",) if getattr(cfg, k) is not None]
    if problems:
        raise UnsupportedConfig(f"no Hugging Face architecture matches this model: {problems}")
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias and not cfg.out_bias:
        return "qwen2"
    if cfg.sliding_window is not None:
        return "mistral"
    if cfg.qkv_bias != cfg.out_bias:
        raise UnsupportedConfig("Llama's attention_bias covers q, k, v and o together")
    return "llama"


def _is_gpt2(cfg: ModelConfig) -> bool:
    return (
        cfg.pos_encoding == "learned"
        and cfg.norm == "layernorm"
        and cfg.norm_bias
        and cfg.norm_placement == "pre"
        and cfg.activation in ("gelu_tanh", "gelu", "relu")
        and cfg.qkv_bias
        and cfg.out_bias
        and cfg.mlp_bias
        and cfg.head_size * cfg.n_heads == cfg.d_model
        and cfg.kv_heads == cfg.n_heads
        and cfg.sliding_window is None
        and not cfg.qk_norm
    )


def hf_config_from_model(cfg: ModelConfig, special_ids: Mapping[str, int | None]) -> dict:
    """config.json contents for `cfg` (transformers 5 layout), with bos/eos/pad ids."""
    model_type = hf_model_type(cfg)
    if model_type in FAMILY_WRITERS:
        out = FAMILY_WRITERS[model_type](cfg)
    elif model_type == "gpt2":
        gelu = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
        out = dict(
            architectures=["GPT2LMHeadModel"],
            vocab_size=cfg.vocab_size,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            n_positions=cfg.max_seq_len,
            activation_function=gelu,
            layer_norm_epsilon=cfg.norm_eps,
            embd_pdrop=cfg.embed_dropout,
            attn_pdrop=cfg.attn_dropout,
            resid_pdrop=cfg.resid_dropout,
        )
    else:
        out = _llama_family_config(cfg, model_type)
    return out | dict(
        model_type=model_type,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        dtype=cfg.param_dtype,
        **{f"{k}_token_id": v for k, v in special_ids.items()},
    )


def _llama_family_config(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling == "linear":
        rope |= {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    elif cfg.rope_scaling == "llama3":
        rope |= {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    out = dict(
        architectures=[f"{name[model_type]}ForCausalLM"],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_size,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_seq_len,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope,
        attention_dropout=cfg.attn_dropout,
    )
    if model_type in ("llama", "qwen3"):
        out["attention_bias"] = cfg.out_bias
    if model_type == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    elif cfg.mlp_bias:
        raise UnsupportedConfig(f"{model_type} has no MLP biases but mlp_bias=True")
    if model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if model_type in ("qwen2", "qwen3"):
        window = cfg.sliding_window
        out |= dict(use_sliding_window=window is not None, sliding_window=window)
        kind = "full_attention" if window is None else "sliding_attention"
        out["layer_types"] = [kind] * cfg.n_layers
        out["max_window_layers"] = 0 if window is not None else cfg.n_layers
    return out

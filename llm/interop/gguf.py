"""GGUF (llama.cpp's checkpoint format) -> our config, params and tokenizer, via `gguf`.

* Weights: each tensor is dequantized by `gguf.quants.dequantize` (Q4_1, Q8_0, K-quants, ...)
  to float32, then cast to the chosen dtype. Dequantized 2-D weights come out (out, in), the
  Hugging Face layout, so the Llama rules of `hf_weights` place them once renamed.
* Q/K permutation: llama.cpp's converter reorders the rows of each Q and K head from the
  "rotate half" layout (channel i paired with i + H/2) to interleaved pairs (2i, 2i+1), the
  layout of its own RoPE kernel. We apply the inverse per head, recovering the HF layout.
* Metadata `llama.*` -> ModelConfig; unknown architecture keys are an error naming them.
* Tokenizer: `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is rebuilt with the
  `tokenizers` library from the stored vocabulary and merges, with the pre-tokenizer llama.cpp
  uses for `tokenizer.ggml.pre`; control tokens become special tokens. The chat template and
  the special tokens go to tokenizer_config.json, as in a Hugging Face model directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import Config, ModelConfig
from llm.interop.hf_config import UnsupportedConfig
from llm.interop.hf_weights import ParamsBuilder, llama_rules
from llm.interop.model_dir import save_model
from llm.model import abstract_params

# Metadata keys under the architecture prefix that we read (others: error).
LLAMA_KEYS = {
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "vocab_size",
}
# GGUF tensor name -> Hugging Face name ("{i}" = layer index).
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# llama.cpp's pre-tokenizer regexes, by `tokenizer.ggml.pre` (see its llama-vocab.cpp).
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {  # name -> (split every digit first, regex)
    "default": (False, GPT2_REGEX),
    "gpt-2": (False, GPT2_REGEX),
    "smollm": (True, GPT2_REGEX),
    "starcoder": (True, GPT2_REGEX),
    "refact": (True, GPT2_REGEX),
    "llama-bpe": (False, LLAMA3_REGEX),
    "qwen2": (False, QWEN2_REGEX),
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def read_metadata(reader) -> dict[str, Any]:
    """Every key-value field of the file as plain Python values."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def model_config_from_gguf(
    meta: dict[str, Any], tensor_names: set[str], source: str
) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UnsupportedConfig(f"{source}: GGUF architecture {arch!r} is not supported (llama)")
    unknown = sorted(k for k in meta if k.startswith("llama.") and k[6:] not in LLAMA_KEYS)
    if unknown:
        raise UnsupportedConfig(f"{source}: GGUF metadata {unknown} is not supported")
    g = lambda key, default=...: _get(meta, f"llama.{key}", default, source)  # noqa: E731
    d_model, n_heads = g("embedding_length"), g("attention.head_count")
    head_dim = g("attention.key_length", d_model // n_heads)
    if (
        g("attention.value_length", head_dim) != head_dim
        or g("rope.dimension_count", head_dim) != head_dim
    ):
        raise UnsupportedConfig(f"{source}: value length or partial RoPE differs from head_dim")
    vocab = g("vocab_size", None) or len(meta["tokenizer.ggml.tokens"])
    if len(meta.get("tokenizer.ggml.tokens", [])) > vocab:
        raise UnsupportedConfig(f"{source}: more tokens than llama.vocab_size={vocab}")
    scaling = g("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise UnsupportedConfig(f"{source}: llama.rope.scaling.type {scaling!r} is not supported")
    return ModelConfig(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=g("block_count"),
        n_heads=n_heads,
        n_kv_heads=g("attention.head_count_kv", n_heads),
        head_dim=head_dim,
        d_ff=g("feed_forward_length"),
        max_seq_len=g("context_length"),
        activation="swiglu",
        norm="rmsnorm",
        norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        norm_bias=False,
        pos_encoding="rope",
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rope_scaling_factor=float(g("rope.scaling.factor", 1.0)) if scaling != "none" else 1.0,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings="output.weight" not in tensor_names,
        scale_residual_init=False,
    )


def _get(meta: dict, key: str, default: Any, source: str) -> Any:
    if key in meta:
        return meta[key]
    if default is ...:
        raise UnsupportedConfig(f"{source}: GGUF metadata key {key!r} is missing")
    return default


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: interleaved pairs -> rotate-half halves."""
    rows = w.shape[0]
    head = rows // n_heads
    return w.reshape(n_heads, head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3...")."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
        key = "blk.{i}." + ".".join(parts[2:])
        if key in TENSOR_NAMES:
            return TENSOR_NAMES[key].replace("{i}", parts[1])
    elif name in TENSOR_NAMES:
        return TENSOR_NAMES[name]
    raise UnsupportedConfig(f"GGUF tensor {name!r} has no place in our llama model")


def load_gguf_params(cfg: ModelConfig, reader) -> dict:
    """Dequantized, un-permuted params (numpy, `cfg.param_dtype`)."""
    from gguf.quants import dequantize

    builder = ParamsBuilder(cfg, llama_rules(cfg), abstract_params(cfg))
    for t in reader.tensors:
        hf_name = _hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if hf_name.endswith("q_proj.weight"):
            w = unpermute_rows(w, cfg.n_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = unpermute_rows(w, cfg.kv_heads)
        builder.add(hf_name, w)
    return builder.build()


def tokenizer_files(meta: dict[str, Any], source: str) -> dict[str, bytes]:
    """tokenizer.json (byte-level BPE) and tokenizer_config.json from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedConfig(
            f"{source}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2' byte BPE)"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedConfig(f"{source}: tokenizer.ggml.pre {pre!r} is not supported")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split_digits, regex = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    steps.append(pre_tokenizers.Split(_regex(regex), behavior="isolated"))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=k == CONTROL, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
    return {
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps(_tokenizer_config(meta, tokens), indent=2).encode(),
    }


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def _tokenizer_config(meta: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("bos", "eos", "unknown", "padding"):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if i is not None:
            key = {"unknown": "unk", "padding": "pad"}.get(name, name)
            out[f"{key}_token"] = tokens[i]
    out["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if "tokenizer.chat_template" in meta:
        out["chat_template"] = meta["tokenizer.chat_template"]
    return out


def import_gguf(path: str | Path, out_dir: str | Path, *, param_dtype: str = "float32") -> Config:
    """Writes an imported model directory (see `model_dir`) from a GGUF file."""
    from gguf import GGUFReader

    src = Path(path)
    reader = GGUFReader(str(src))
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    model = model_config_from_gguf(meta, names, str(src))
    model = _with_dtype(model, param_dtype)
    files = tokenizer_files(meta, str(src))
    params = load_gguf_params(model, reader)
    source = {
        "format": "gguf",
        "path": str(src.absolute()),
        "name": meta.get("general.name"),
        "quantization": sorted({t.tensor_type.name for t in reader.tensors}),
    }
    return save_model(out_dir, model, params, tokenizer_files=files, source=source)


def _with_dtype(model: ModelConfig, dtype: str) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(model, dtype=dtype, param_dtype=dtype)

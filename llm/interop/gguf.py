"""GGUF (llama.cpp's checkpoint format) -> our config, params and tokenizer, via `gguf`.

* Weights: each tensor is dequantized by `gguf.quants.dequantize` (Q4_1, Q8_0, K-quants, ...)
  to float32, then cast to the chosen dtype. Dequantized 2-D weights come out (out, in), the
  Hugging Face layout, so the Llama rules of `hf_weights` place them once renamed.
* `keep_quantized`: Q8_0, Q4_0 and Q4_1 blocks become QArrays (`llm.ops.quantized`) without
  any rounding: the codes are read from the block bytes here (int8; int4 = q - 8; uint4 = q with
  offset m), the scales (and Q4_1's m) stay float16 as stored, so a QArray dequantizes to
  exactly the float32 `gguf.quants.dequantize` gives (f16 -> f32, then c * d (+ m) in float32)
  and stores 8.5 (Q8_0), 4.5 (Q4_0) or 5 (Q4_1) bits per weight, as the file does. ggml blocks
  run along each row's input features, our groups along K: the same blocks, so only the axes
  move (rows = output features, hence the Q/K row permutation keeps every block whole). A
  stacked weight stays quantized only if every layer has the same kept type; other tensors are
  dequantized as above and listed in source.json.
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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import Config, ModelConfig
from llm.interop.gguf_tokenizer import tokenizer_files
from llm.interop.hf_config import UnsupportedConfig
from llm.interop.hf_weights import ParamsBuilder, llama_rules
from llm.interop.model_dir import save_model
from llm.model import abstract_params
from llm.model.quantized import weight_layouts
from llm.ops.quantized import from_codes, stack

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
# GGUF tensor name -> our weight path, for the weights that may stay quantized.
GGUF_PATHS = {
    "token_embd.weight": "token_embed",
    "output.weight": "lm_head",
    **{f"blk.{{i}}.attn_{n}.weight": f"blocks/attn/{n}/w" for n in "qkv"},
    "blk.{i}.attn_output.weight": "blocks/attn/o/w",
    **{f"blk.{{i}}.ffn_{n}.weight": f"blocks/mlp/{n}/w" for n in ("gate", "up", "down")},
}
KEPT_TYPES = {"Q8_0": ("int8", 8), "Q4_0": ("int4", 4), "Q4_1": ("uint4", 4)}  # -> (fmt, bits)
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK = 32  # values of K per Q8_0 / Q4_0 / Q4_1 block


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
        norm_eps=_f32(g("attention.layer_norm_rms_epsilon")),
        norm_bias=False,
        pos_encoding="rope",
        rope_theta=_f32(g("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rope_scaling_factor=_f32(g("rope.scaling.factor", 1.0)) if scaling != "none" else 1.0,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings="output.weight" not in tensor_names,
        scale_residual_init=False,
    )


def _f32(value: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06):
    the same float32, and the value a config written by a person round-trips to."""
    return float(str(np.float32(value)))


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


def load_gguf_params(
    cfg: ModelConfig, reader, *, keep_quantized: bool = False
) -> tuple[dict, dict[str, Any]]:
    """Un-permuted params (`cfg.param_dtype`) and what happened to each stored type.

    Without `keep_quantized` every tensor is dequantized; with it, each weight whose tensors
    (every layer's, for stacked block weights) share one kept type becomes a QArray."""
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}
    kept = _kept_weights(cfg, tensors) if keep_quantized else {}
    kept_names = {name for layers in kept.values() for name in layers.values()}
    rules = [r for r in llama_rules(cfg) if "/".join(r.ours[0]) not in kept]
    builder = ParamsBuilder(cfg, rules, abstract_params(cfg))
    report: dict[str, Any] = {"kept": {}, "dequantized": {}, "float": 0}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if t.name in kept_names:
            report["kept"][kind] = report["kept"].get(kind, 0) + 1
            continue
        if kind in FLOAT_TYPES:
            report["float"] += 1
        else:
            report["dequantized"].setdefault(kind, []).append(t.name)
        hf_name = _hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        builder.add(hf_name, _unpermuted(cfg, hf_name, w))
    params = builder.build()
    for path, layers in kept.items():
        _set_path(params, path, _qarray(cfg, path, layers, tensors))
    return params, report


def _unpermuted(cfg: ModelConfig, hf_name: str, rows: np.ndarray) -> np.ndarray:
    """Rows (output features) of Q and K back in the rotate-half layout; others unchanged."""
    if hf_name.endswith("q_proj.weight"):
        return unpermute_rows(rows, cfg.n_heads)
    if hf_name.endswith("k_proj.weight"):
        return unpermute_rows(rows, cfg.kv_heads)
    return rows


def _kept_weights(cfg: ModelConfig, tensors: dict) -> dict[str, dict[int | None, str]]:
    """Our weight path -> {layer: GGUF name} for the weights that stay quantized: one kept
    type for all its tensors, no Q8_0 code -128 (our int8 decodes [-127, 127]), and for
    4-bit codes an even last axis (QArray packs nibble pairs along it; an odd vocabulary
    in an untied head is dequantized)."""
    layouts, abstract = weight_layouts(cfg), dict(_flat(abstract_params(cfg)))
    by_path: dict[str, dict[int | None, str]] = {}
    for name in tensors:
        path, layer = _our_path(name)
        if path in layouts:
            by_path.setdefault(path, {})[layer] = name
    kept = {}
    for path, layers in by_path.items():
        (kind, *others) = {tensors[n].tensor_type.name for n in layers.values()}
        if others or kind not in KEPT_TYPES:
            continue
        if kind == "Q8_0" and any(_has_q8_min(tensors[n]) for n in layers.values()):
            continue
        if kind != "Q8_0" and abstract[path].shape[-1] % 2:
            continue
        kept[path] = layers
    return kept


def _has_q8_min(t) -> bool:
    return bool((t.data.reshape(-1, 34)[:, 2:].view(np.int8) == -128).any())


def _our_path(name: str) -> tuple[str, int | None]:
    """Our weight path ("blocks/attn/q/w") and layer of a GGUF tensor name."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
        return GGUF_PATHS.get("blk.{i}." + ".".join(parts[2:]), ""), int(parts[1])
    return GGUF_PATHS.get(name, ""), None


def block_codes(t) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(int32 codes [rows, K], float16 scales [rows, K/32], float16 offsets or None) of a
    Q8_0 / Q4_0 / Q4_1 tensor, read from its block bytes (ggml's `block_q8_0` etc.):
    Q8_0 = f16 d, 32 x int8; Q4_0 = f16 d, 16 bytes (element j in the low nibble of byte j,
    element j + 16 in its high nibble), value d * (q - 8); Q4_1 = f16 d, f16 m, nibbles as
    Q4_0, value d * q + m."""
    kind = t.tensor_type.name
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
    rows = t.data.shape[0]
    blocks = t.data.reshape(rows, -1, size)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    if kind == "Q8_0":
        codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.int32)
        return codes.reshape(rows, -1), scales, None
    packed = blocks[..., 4:] if kind == "Q4_1" else blocks[..., 2:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.int32)
    if kind == "Q4_0":
        return codes.reshape(rows, -1) - 8, scales, None
    offsets = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    return codes.reshape(rows, -1), scales, offsets


def _qarray(cfg: ModelConfig, path: str, layers: dict[int | None, str], tensors: dict):
    """One weight's QArray from its GGUF tensors (one per layer, stacked, for block weights)."""
    spec = dict(_flat(abstract_params(cfg)))[path]
    if path.startswith("blocks/") and sorted(layers) != list(range(cfg.n_layers)):
        missing = sorted(set(range(cfg.n_layers)) - set(layers))
        raise ValueError(f"{path}: layers {missing} are missing from the GGUF file")
    n_in, n_out = weight_layouts(cfg)[path]
    shape = spec.shape[1:] if path.startswith("blocks/") else spec.shape
    qs = []
    for layer in sorted(layers, key=lambda i: i or 0):
        t = tensors[layers[layer]]
        fmt, bits = KEPT_TYPES[t.tensor_type.name]
        codes, scales, offsets = _our_layout(cfg, t, shape, n_in, n_out)
        kw = {"fmt": fmt, "bits": bits, "group": BLOCK, "n_in": n_in, "n_out": n_out}
        qs.append(from_codes(codes, scales, offsets, dtype=cfg.param_dtype, **kw))
    return stack(qs) if path.startswith("blocks/") else qs[0]


def _our_layout(cfg: ModelConfig, t, shape: tuple, n_in: int, n_out: int) -> tuple:
    """Codes, scales and offsets of one GGUF matrix [lead x out rows, K] in our layout:
    codes like the weight (*lead, *in_dims, *out_dims), scales (*lead, K/32, *out_dims)."""
    hf = _hf_name(t.name)
    arrays = [None if a is None else _unpermuted(cfg, hf, a) for a in block_codes(t)]
    n_lead = len(shape) - n_in - n_out
    lead, in_dims, out_dims = shape[:n_lead], shape[n_lead : n_lead + n_in], shape[n_lead + n_in :]
    if arrays[0].shape != (int(np.prod(lead + out_dims)), int(np.prod(in_dims))):
        raise ValueError(f"GGUF tensor {t.name!r}: shape {arrays[0].shape} does not fit {shape}")

    def ours(a: np.ndarray) -> np.ndarray:  # [rows, cols] -> (*lead, cols, *out_dims)
        return np.moveaxis(a.reshape(*lead, *out_dims, a.shape[-1]), -1, n_lead)

    codes = ours(arrays[0]).reshape(shape)
    return codes, ours(arrays[1]), None if arrays[2] is None else ours(arrays[2])


def _flat(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield prefix + key, value


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def import_gguf(
    path: str | Path,
    out_dir: str | Path,
    *,
    param_dtype: str = "float32",
    keep_quantized: bool = False,
) -> Config:
    """Writes an imported model directory (see `model_dir`) from a GGUF file; with
    `keep_quantized`, Q8_0/Q4_0/Q4_1 weights are saved as QArrays (quantization.json)."""
    from gguf import GGUFReader

    src = Path(path)
    reader = GGUFReader(str(src))
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    model = model_config_from_gguf(meta, names, str(src))
    model = _with_dtype(model, param_dtype)
    files = tokenizer_files(meta, str(src))
    params, stored = load_gguf_params(model, reader, keep_quantized=keep_quantized)
    source = {
        "format": "gguf",
        "path": str(src.absolute()),
        "name": meta.get("general.name"),
        "quantization": sorted({t.tensor_type.name for t in reader.tensors}),
        "keep_quantized": keep_quantized,
        "tensors": stored,  # kept: type -> count; dequantized: type -> names; float: count
    }
    return save_model(out_dir, model, params, tokenizer_files=files, source=source)


def _with_dtype(model: ModelConfig, dtype: str) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(model, dtype=dtype, param_dtype=dtype)

"""Our llama-architecture model -> a GGUF file (`llm convert to-gguf`), read back by our importer.

* Which models: exactly those `gguf.model_config_from_gguf` reads back. The metadata we would
  write is fed to the importer's own reader and the ModelConfig it returns is compared with ours
  field by field; any architecture difference (LayerNorm, biases, learned positions, qk-norm,
  sliding windows, llama3 RoPE scaling ...) is refused naming the field, before any tensor moves.
* Tensors: `hf_weights.hf_tensors` gives the Hugging Face (out, in) layout; Q and K rows are
  permuted per head to llama.cpp's interleaved-pair RoPE layout (the inverse of the importer's
  `unpermute_rows`), and the names follow llama.cpp's `blk.{i}.attn_q.weight` scheme.
* Types, as llama.cpp's converter does: norms and every 1-D tensor stay F32; 2-D weights take the
  chosen type (f32, f16, q8_0, q4_0). A matrix whose rows are not a whole number of 32-value
  blocks falls back to F16 and is reported. QArray leaves (quantized models) are dequantized first.
* Quantization is `gguf.quants.quantize`, gguf-py's numpy port of ggml's reference quantizers,
  kept by the llama.cpp maintainers beside the format itself (its Q8_0 is bit-exact with
  ggml-quants.c): a second implementation of a byte format would only be a place to drift.
* Tokenizer: a byte-level BPE `tokenizer.json` becomes `tokenizer.ggml.model = "gpt2"` with
  tokens, token types (control = special added token, user-defined = other added token),
  merges, and the `tokenizer.ggml.pre` name whose regex and digit splitting match its
  pre-tokenizer (the importer's PRE_TOKENIZERS table). Our "byte" tokenizer is the same
  vocabulary without merges (ids 0-255 = bytes, then PAD/BOS/EOS). The vocabulary is padded
  with unused `[PAD{i}]` tokens to the embedding's row count, as llama.cpp's converter does.
  Specials and the chat template come from tokenizer_config.json.
* Memory: the written tensors (the output file's size) are held beside the params until the
  file is written (`gguf.GGUFWriter`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm.config import Config, ModelConfig
from llm.interop.gguf import BLOCK, TENSOR_NAMES, model_config_from_gguf
from llm.interop.gguf_tokenizer import PRE_TOKENIZERS
from llm.interop.hf_config import UnsupportedConfig, check_transformer
from llm.interop.hf_weights import hf_tensors
from llm.ops import quantized
from llm.tokenizers.bytelevel import byte_alphabet
from llm.typing import PyTree

TYPES = ("f32", "f16", "q8_0", "q4_0")
# Fields of ModelConfig a GGUF file does not describe (training and execution choices).
NOT_STORED = (
    "embed_dropout",
    "attn_dropout",
    "resid_dropout",
    "init_std",
    "scale_residual_init",
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
    "attention_impl",
)
PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")  # preferred spelling of each regex
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types
EMBEDDINGS = ("token_embd.weight", "output.weight")  # typed by `embed_kind`


@dataclass(frozen=True)
class GgufExport:
    """What `export_gguf` wrote: the file, its size, and each stored type's tensor count."""

    path: Path
    nbytes: int
    types: dict[str, int]  # GGML type name -> number of tensors stored with it
    f16_fallback: tuple[str, ...]  # matrices whose rows are not whole blocks (stored F16)


def gguf_qtype(kind: str):
    import gguf

    if kind not in TYPES:
        raise ValueError(f"GGUF export type {kind!r} is not one of {TYPES}")
    return gguf.GGMLQuantizationType[kind.upper()]


def llama_metadata(cfg: ModelConfig) -> dict[str, Any]:
    """The `llama.*` keys describing `cfg` (only keys the importer reads)."""
    meta = {
        "block_count": cfg.n_layers,
        "context_length": cfg.max_seq_len,
        "embedding_length": cfg.d_model,
        "feed_forward_length": cfg.d_ff,
        "attention.head_count": cfg.n_heads,
        "attention.head_count_kv": cfg.kv_heads,
        "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "rope.freq_base": float(cfg.rope_theta),
        "rope.dimension_count": cfg.head_size,
        "vocab_size": cfg.vocab_size,
    }
    if cfg.head_size != cfg.d_model // cfg.n_heads:
        meta["attention.key_length"] = meta["attention.value_length"] = cfg.head_size
    if cfg.rope_scaling != "none":
        meta["rope.scaling.type"] = cfg.rope_scaling
        meta["rope.scaling.factor"] = float(cfg.rope_scaling_factor)
    return {f"llama.{k}": v for k, v in meta.items()}


def check_exportable(cfg: ModelConfig) -> None:
    """Refuses a model the importer would read back as a different architecture."""
    check_transformer(cfg, "GGUF export")
    if cfg.activation != "swiglu" or cfg.norm != "rmsnorm" or cfg.pos_encoding != "rope":
        raise UnsupportedConfig(
            f"GGUF export writes llama models (swiglu, rmsnorm, rope); this one has "
            f"activation={cfg.activation!r}, norm={cfg.norm!r}, pos_encoding={cfg.pos_encoding!r}"
        )
    meta = {"general.architecture": "llama", **llama_metadata(cfg)}
    names = set() if cfg.tie_embeddings else {"output.weight"}
    try:
        back = model_config_from_gguf(meta, names, "export")
    except UnsupportedConfig as e:
        raise UnsupportedConfig(f"GGUF export: our importer could not read it back ({e})") from e
    ours = dataclasses.replace(cfg, head_dim=cfg.head_size, n_kv_heads=cfg.kv_heads)
    diff = [
        f"{f.name}={getattr(ours, f.name)!r} (GGUF llama reads {getattr(back, f.name)!r})"
        for f in dataclasses.fields(ModelConfig)
        if f.name not in NOT_STORED and not _same(getattr(ours, f.name), getattr(back, f.name))
    ]
    if diff:
        raise UnsupportedConfig(f"GGUF export cannot store {', '.join(diff)}")


def _same(a: Any, b: Any) -> bool:
    """Equal, floats as the float32 GGUF stores."""
    if isinstance(a, float) and isinstance(b, float):
        return np.float32(a) == np.float32(b)
    return a == b


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp converter's Q/K row permutation: rotate-half halves -> interleaved pairs."""
    rows = w.shape[0]
    head = rows // n_heads
    return w.reshape(n_heads, 2, head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names() -> dict[str, str]:
    """Hugging Face name pattern -> GGUF name pattern ("{i}" = layer)."""
    return {hf: g for g, hf in TENSOR_NAMES.items()}


def gguf_tensors(cfg: ModelConfig, params: PyTree) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in llama.cpp's layout) for every tensor, one at a time."""
    names = _gguf_names()
    floats = jax.tree.map(_to_float, params, is_leaf=quantized.is_qarray)
    for hf_name, w in hf_tensors(cfg, floats):
        parts = hf_name.split(".")
        layer = parts[2] if parts[:2] == ["model", "layers"] else None
        pattern = hf_name if layer is None else hf_name.replace(f".{layer}.", ".{i}.", 1)
        name = names[pattern].replace("{i}", layer or "")
        w = np.asarray(w, np.float32)
        if pattern.endswith("q_proj.weight"):
            w = permute_rows(w, cfg.n_heads)
        elif pattern.endswith("k_proj.weight"):
            w = permute_rows(w, cfg.kv_heads)
        yield name, np.ascontiguousarray(w)


def _to_float(x):
    return np.asarray(quantized.dequantize(x) if quantized.is_qarray(x) else x, np.float32)


def encode_tensor(w: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    """(stored array, GGML type): 1-D -> F32; a matrix -> `kind` (F16 if rows are not blocks)."""
    import gguf

    qtype = gguf_qtype(kind)
    if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16 or w.shape[-1] % BLOCK:
        return w.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(w, qtype), qtype


def export_gguf(
    config: Config,
    params: PyTree,
    out_path: str | Path,
    *,
    kind: str = "f32",
    embed_kind: str | None = None,
    tokenizer_dir: str | Path | None = None,
    name: str | None = None,
) -> GgufExport:
    """Writes `out_path` (llama architecture); refuses models the importer cannot read back.
    `embed_kind` (default `kind`) is the type of the token table and output head, which
    llama.cpp's 4-bit recipes keep at higher precision."""
    from tqdm import tqdm

    cfg = config.model
    embed_kind = embed_kind or kind
    for k in (kind, embed_kind):
        gguf_qtype(k)  # a bad name fails before any work
    check_exportable(cfg)
    tok = tokenizer_metadata(config.data.tokenizer, tokenizer_dir, cfg.vocab_size)
    total = 3 - int(cfg.tie_embeddings) + 9 * cfg.n_layers  # globals (token_embd, ...) + blocks
    tensors = tqdm(gguf_tensors(cfg, params), total=total, desc=f"GGUF {kind}", leave=False)
    asked = lambda n: embed_kind if n in EMBEDDINGS else kind  # noqa: E731
    encoded = ((n, *encode_tensor(w, asked(n)), asked(n)) for n, w in tensors)
    return write_gguf(out_path, cfg, tok, encoded, kind=kind, name=name)


def write_gguf(
    out_path: str | Path,
    cfg: ModelConfig,
    tok: dict[str, Any],
    tensors: Iterable[tuple[str, np.ndarray, Any, str]],  # (name, data, GGML type, asked kind)
    *,
    kind: str,
    name: str | None = None,
) -> GgufExport:
    """Writes metadata and (GGUF name, stored array, GGML type) tensors to a new file."""
    import gguf

    out = Path(out_path)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "llama")
    _write_metadata(writer, cfg, tok, kind, name or out.stem)
    types: dict[str, int] = {}
    fallback = []
    for tname, data, qtype, asked in tensors:
        if data.ndim == 2 and asked in ("q8_0", "q4_0") and qtype.name == "F16":
            fallback.append(tname)  # rows are not whole blocks: stored F16
        types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.add_tensor(tname, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufExport(out, out.stat().st_size, types, tuple(fallback))


def _write_metadata(writer, cfg: ModelConfig, tok: dict[str, Any], kind: str, name: str) -> None:
    import gguf

    writer.add_name(name)
    file_type = {
        "f32": "ALL_F32",
        "f16": "MOSTLY_F16",
        "q8_0": "MOSTLY_Q8_0",
        "q4_0": "MOSTLY_Q4_0",
    }
    writer.add_file_type(gguf.LlamaFileType[file_type[kind]])
    if kind in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    u32, f32, s = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING
    for key, value in llama_metadata(cfg).items():
        vtype = s if isinstance(value, str) else f32 if isinstance(value, float) else u32
        writer.add_key_value(key, value, vtype)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key in ("bos", "eos", "unknown", "padding"):
        if tok.get(key) is not None:
            writer.add_key_value(f"tokenizer.ggml.{key}_token_id", tok[key], u32)
    writer.add_add_bos_token(tok["add_bos"])
    if tok.get("chat_template"):
        writer.add_chat_template(tok["chat_template"])


def tokenizer_metadata(spec: str, tok_dir: str | Path | None, vocab_size: int) -> dict[str, Any]:
    """The gpt2-BPE tokenizer fields: tokens, types, merges, pre, special ids, chat template."""
    if spec == "byte":
        tokens = [*byte_alphabet(), "<|pad|>", "<|bos|>", "<|eos|>"]
        types = [NORMAL] * 256 + [CONTROL] * 3
        tok = {"pre": "gpt-2", "merges": [], "padding": 256, "bos": 257, "eos": 258}
        tok |= {"add_bos": False}
    else:
        path = Path(tok_dir) / "tokenizer.json" if tok_dir else None
        if path is None or not path.is_file():
            raise UnsupportedConfig(
                f"GGUF export needs a byte-level BPE tokenizer.json; tokenizer {spec!r} has none"
            )
        tokens, types, tok = _bpe_tokens(json.loads(path.read_text()), str(path))
        tok |= _specials(Path(tok_dir) / "tokenizer_config.json", tokens)
    if len(tokens) > vocab_size:
        raise UnsupportedConfig(f"tokenizer has {len(tokens)} tokens > vocab_size={vocab_size}")
    pad = range(len(tokens), vocab_size)
    return tok | {
        "tokens": tokens + [f"[PAD{i}]" for i in pad],
        "types": types + [UNUSED] * len(pad),
    }


def _bpe_tokens(data: dict, where: str) -> tuple[list[str], list[int], dict[str, Any]]:
    model = data.get("model") or {}
    if model.get("type") != "BPE" or data.get("normalizer") is not None:
        raise UnsupportedConfig(f"{where}: GGUF export needs a byte-level BPE without normalizer")
    by_id = {i: (t, NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added["special"] else USER_DEFINED)
    n = max(by_id) + 1
    tokens = [by_id.get(i, (f"[PAD{i}]", UNUSED))[0] for i in range(n)]
    types = [by_id.get(i, ("", UNUSED))[1] for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return (
        tokens,
        types,
        {"pre": pre_tokenizer_name(data.get("pre_tokenizer"), where), "merges": merges},
    )


def pre_tokenizer_name(pre: dict | None, where: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (byte-level only)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s["type"] for s in steps]
    byte_level = [s for s in steps if s["type"] == "ByteLevel"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space", False):
        raise UnsupportedConfig(f"{where}: pre-tokenizer {kinds} is not byte-level BPE (gpt2)")
    digits = any(s["type"] == "Digits" and s.get("individual_digits") for s in steps)
    regexes = [s["pattern"].get("Regex") for s in steps if s["type"] == "Split"]
    if byte_level[0].get("use_regex", True):
        regexes.append(PRE_TOKENIZERS["gpt-2"][1])
    for name in PRE_NAMES:
        if len(regexes) == 1 and PRE_TOKENIZERS[name] == (digits, regexes[0]):
            return name
    raise UnsupportedConfig(f"{where}: pre-tokenizer {kinds} matches no llama.cpp pre-type")


def _specials(config_path: Path, tokens: list[str]) -> dict[str, Any]:
    conf = json.loads(config_path.read_text()) if config_path.is_file() else {}
    ids = {t: i for i, t in enumerate(tokens)}
    out: dict[str, Any] = {"add_bos": bool(conf.get("add_bos_token", False))}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token = conf.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None and token not in ids:
            raise UnsupportedConfig(
                f"{config_path}: {key}_token {token!r} is not in the vocabulary"
            )
        out[gguf_key] = ids.get(token)
    out["chat_template"] = conf.get("chat_template")
    return out

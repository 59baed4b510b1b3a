"""The tokenizer of a GGUF file: llama.cpp's byte-level BPE metadata as a `tokenizers` file.

    files = tokenizer_files(meta, "model.gguf")   # tokenizer.json, tokenizer_config.json bytes

`tokenizer.ggml.tokens` / `merges` become a byte-level BPE model; `tokenizer.ggml.pre` names
the pre-tokenizer llama.cpp uses (`PRE_TOKENIZERS`: `smollm` / `starcoder` split every digit,
then the GPT-2 regex; `gpt-2`, `llama-bpe`, `qwen2` are known too). Control tokens become
special added tokens, user-defined ones plain added tokens; bos/eos/unk/pad, add_bos_token and
the chat template go to tokenizer_config.json. The GGUF exporter (gguf_export.py) reads the
same table backwards.
"""

from __future__ import annotations

import json
from typing import Any

from llm.interop.hf_config import UnsupportedConfig

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
    # gguf-py cannot store an empty array: no merges key = none (a byte vocabulary)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
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

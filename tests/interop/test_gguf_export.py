"""GGUF export (`llm convert to-gguf`): read by the `gguf` package, round-tripped by our importer.

A tiny random llama-architecture model (with a byte-level BPE tokenizer.json and a chat
template) is exported, read back with `gguf.GGUFReader` and re-imported with `import_gguf`.
F32 must come back bitwise, F16 as the float16 rounding of each weight, and Q8_0 / Q4_0 within
each block's quantization step (the bound is derived in `block_bound`).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from test_gguf import CHATML, TEXTS, llama_cpp_permute, source_tokenizer

from llm.checkpoint import load_model
from llm.cli import main
from llm.config import Config, DataConfig, ModelConfig
from llm.interop import UnsupportedConfig, import_gguf, save_model
from llm.interop.gguf import block_codes
from llm.interop.gguf_export import (
    check_exportable,
    export_gguf,
    gguf_tensors,
    llama_metadata,
    permute_rows,
    pre_tokenizer_name,
)
from llm.model import forward, init_params
from llm.tokenizers import load_tokenizer

LLAMA = ModelConfig(
    vocab_size=320,  # > the tokenizer's 300 + 3 specials: the exporter pads with [PAD{i}]
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=96,
    max_seq_len=64,
    activation="swiglu",
    norm="rmsnorm",
    norm_bias=False,
    pos_encoding="rope",
    rope_theta=5000.0,
    tie_embeddings=False,
    scale_residual_init=False,
)


def random_params(cfg: ModelConfig, seed: int) -> dict:
    """Every leaf redrawn (norms around 1), so a swapped or mis-permuted tensor shows."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        return rng.normal(0.0, 0.2, x.shape).astype(np.float32) + is_norm(path)

    return jax.tree_util.tree_map_with_path(draw, init_params(cfg, jax.random.key(seed)))


def is_norm(path) -> bool:
    return any("norm" in str(k.key) for k in path)


def model_dir(tmp_path, cfg: ModelConfig = LLAMA, seed: int = 0):
    """A saved model directory with a smollm-style tokenizer.json and a chat template."""
    tok = source_tokenizer()
    files = {
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps(
            {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML}
        ).encode(),
    }
    out = tmp_path / "model"
    save_model(out, cfg, random_params(cfg, seed), tokenizer_files=files, source={})
    return load_model(out), out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The model, its directory, and for each type: (GGUF path, re-imported model)."""
    tmp = tmp_path_factory.mktemp("export")
    model, directory = model_dir(tmp)
    out = {}
    for kind in ("f32", "f16", "q8_0", "q4_0"):
        path = tmp / f"model.{kind}.gguf"
        export_gguf(model.config, model.params, path, kind=kind, tokenizer_dir=directory)
        import_gguf(path, tmp / f"back_{kind}")
        out[kind] = (path, load_model(tmp / f"back_{kind}"))
    return model, directory, out


def test_f32_round_trip_is_bitwise(exported):
    model, _, out = exported
    back = out["f32"][1]
    assert back.config.model == dataclasses.replace(model.config.model, head_dim=16)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(back.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_f16_round_trip_is_the_float16_rounding(exported):
    model, _, out = exported
    flat = dict(jax.tree_util.tree_flatten_with_path(model.params)[0])
    for path, b in jax.tree_util.tree_flatten_with_path(out["f16"][1].params)[0]:
        a = np.asarray(flat[path])
        want = a if is_norm(path) else a.astype(np.float16)  # norms stay F32
        np.testing.assert_array_equal(np.asarray(b), want.astype(np.float32), err_msg=str(path))


def block_bound(kind: str, d16: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Largest |w - decoded w| per value, from the stored block scale d16 and code c.

    Rounding to the nearest code is off by at most half a step |d|, where d is the scale the
    quantizer divided by (float32); storing d as float16 moves each value by |c| |d - d16| <=
    |c| |d16| 2^-11 (1 + 2^-10). Q4_0 sets d = max / -8 so the signed extreme maps to code -8
    exactly; a value of the opposite sign with |w| near |max| would need code +8 and is clipped
    to +7: at most one whole step. So code +7 gets |d|, every other code |d| / 2."""
    rel = 2.0**-11 * (1 + 2.0**-10)
    half = np.where((codes == 7) if kind == "q4_0" else False, 1.0, 0.5)
    return np.abs(d16) * (half + np.abs(codes) * rel) * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantized_round_trip_within_each_block_step(exported, kind):
    from gguf import GGUFReader

    model, _, out = exported
    path, back = out[kind]
    original = dict(gguf_tensors(model.config.model, model.params))
    imported = dict(gguf_tensors(back.config.model, back.params))
    n_quantized = 0
    for t in GGUFReader(str(path)).tensors:
        w, w_hat = original[t.name], imported[t.name]
        if t.tensor_type.name == "F32":
            assert w.ndim == 1 and np.array_equal(w, w_hat), t.name
            continue
        assert t.tensor_type.name == kind.upper(), t.name
        codes, d16, _ = block_codes(t)
        step = np.repeat(d16.astype(np.float32), 32, axis=1)
        bound = block_bound(kind, step, codes)
        assert np.all(np.abs(w - w_hat) <= bound), t.name
        assert np.abs(w - w_hat).max() > 0, t.name  # the types really quantized
        n_quantized += 1
    assert n_quantized == 1 + 7 * 2 + 1  # token_embd, 7 matrices per layer, output


def test_every_metadata_key_reads_back(exported):
    from gguf import GGUFReader

    model, _, out = exported
    cfg = model.config.model
    reader = GGUFReader(str(out["q4_0"][0]))
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == 2  # LlamaFileType.MOSTLY_Q4_0
    assert meta["general.quantization_version"] == 2
    for key, value in llama_metadata(cfg).items():
        assert meta[key] == pytest.approx(value), key
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == cfg.vocab_size == len(meta["tokenizer.ggml.token_type"])
    assert tokens[-1] == f"[PAD{cfg.vocab_size - 1}]"
    assert tokens[meta["tokenizer.ggml.bos_token_id"]] == "<|im_start|>"
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert meta["tokenizer.chat_template"] == CHATML
    assert len(meta["tokenizer.ggml.merges"]) > 0


def test_reimported_tokenizer_and_logits(exported):
    model, _, out = exported
    back = out["f32"][1]
    for text in TEXTS:
        assert back.tokenizer.encode(text) == model.tokenizer.encode(text), text
    ids = np.arange(20, dtype=np.int32).reshape(2, 10)
    a = forward(model.config.model, model.params, ids).logits_BLV
    b = forward(back.config.model, back.params, ids).logits_BLV
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_byte_tokenizer_model_exports(tmp_path):
    """The default model's byte tokenizer: 256 byte tokens, no merges, PAD/BOS/EOS."""
    cfg = dataclasses.replace(LLAMA, vocab_size=259, tie_embeddings=True, max_seq_len=256)
    config = Config(model=cfg, data=DataConfig(tokenizer="byte"))
    export_gguf(config, random_params(cfg, 1), tmp_path / "m.gguf", kind="f32")
    import_gguf(tmp_path / "m.gguf", tmp_path / "back")
    back = load_model(tmp_path / "back")
    text = "héllo, wörld 123\n"
    assert back.tokenizer.encode(text) == load_tokenizer("byte").encode(text)
    assert (back.tokenizer.pad_id, back.tokenizer.bos_id, back.tokenizer.eos_id) == (256, 257, 258)
    assert back.config.model.tie_embeddings


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(norm="layernorm", norm_bias=True), "norm"),
        (dict(pos_encoding="learned"), "pos_encoding"),
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(qkv_bias=True), "qkv_bias"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(sliding_window=8), "sliding_window"),
        (dict(norm_placement="post"), "norm_placement"),
        (dict(rope_scaling="llama3", rope_scaling_factor=8.0), "llama3"),
    ],
)
def test_unreadable_architectures_are_refused_by_name(change, field):
    with pytest.raises(UnsupportedConfig, match=field):
        check_exportable(dataclasses.replace(LLAMA, **change))


def test_permute_rows_is_llama_cpp_converters():
    w = np.random.default_rng(0).normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(permute_rows(w, 3), llama_cpp_permute(w, 3))


def test_pre_tokenizer_names():
    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(gpt2, "t") == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert (
        pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, gpt2]}, "t") == "smollm"
    )
    with pytest.raises(UnsupportedConfig, match="byte-level"):
        pre_tokenizer_name({"type": "Metaspace"}, "t")
    with pytest.raises(UnsupportedConfig, match="byte-level"):
        pre_tokenizer_name(gpt2 | {"add_prefix_space": True}, "t")


def test_to_gguf_command(exported, tmp_path, capsys):
    _, directory, _ = exported
    out = tmp_path / "cli.gguf"
    args = ["convert", "to-gguf", "--checkpoint", str(directory), "--out", str(out)]
    assert main([*args, "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "tensors 5 F32, 16 Q8_0" in printed, printed
    assert main([*args, "--type", "q8_0"]) == 2  # the file exists: refused, not overwritten
    assert "already exists" in capsys.readouterr().err
    args[-1] = str(tmp_path / "mixed.gguf")
    assert main([*args, "--type", "q4_0", "--embed-type", "q8_0"]) == 0
    assert "tensors 5 F32, 14 Q4_0, 2 Q8_0" in capsys.readouterr().out

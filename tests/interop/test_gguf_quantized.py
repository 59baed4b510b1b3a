"""GGUF import with `keep_quantized`: Q8_0 / Q4_0 / Q4_1 blocks become QArrays, bit for bit.

A tiny random llama model is written to GGUF with a different type per weight (the three kept
types, Q5_0, and a weight whose layers disagree), then imported twice: dequantized (the
reference: `gguf.quants.dequantize`) and kept quantized. Every kept QArray must dequantize to
exactly the reference's float32 array, and the two models must give the same logits.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import gguf
import jax
import numpy as np
import pytest
from test_gguf_export import LLAMA, random_params

from llm.checkpoint import load_model
from llm.cli import main
from llm.config import Config, DataConfig
from llm.interop import import_gguf
from llm.interop.gguf import _kept_weights, block_codes
from llm.interop.gguf_export import export_gguf, gguf_tensors, tokenizer_metadata, write_gguf
from llm.model import forward
from llm.ops.quantized import dequantize, dequantize_reference, is_qarray

Q = gguf.GGMLQuantizationType
TYPES = {  # GGUF name (layer left out) -> stored type; ffn_up: layer 0 Q8_0, layer 1 Q4_1
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q4_1,  # [D, V = 259]: nibble pairs need an even V, so dequantized
    "attn_q.weight": Q.Q4_0,
    "attn_k.weight": Q.Q4_1,
    "attn_v.weight": Q.Q8_0,
    "attn_output.weight": Q.Q4_1,
    "ffn_gate.weight": Q.Q5_0,
    "ffn_down.weight": Q.Q4_0,
}
KEPT = {  # our path -> (fmt, bits)
    "token_embed": ("int8", 8),
    "blocks/attn/q/w": ("int4", 4),
    "blocks/attn/k/w": ("uint4", 4),
    "blocks/attn/v/w": ("int8", 8),
    "blocks/attn/o/w": ("uint4", 4),
    "blocks/mlp/down/w": ("int4", 4),
}
IDS = np.random.default_rng(2).integers(0, 259, size=(2, 12)).astype(np.int32)


def stored_type(name: str):
    if name.endswith("ffn_up.weight"):
        return Q.Q8_0 if name.startswith("blk.0.") else Q.Q4_1
    key = name.split(".", 2)[-1] if name.startswith("blk.") else name
    return TYPES.get(key, Q.F32)


def write_mixed_gguf(cfg, params, path) -> None:
    tok = tokenizer_metadata("byte", None, cfg.vocab_size)
    tensors = (
        (
            name,
            gguf.quants.quantize(w, stored_type(name)),
            stored_type(name),
            stored_type(name).name.lower(),
        )
        for name, w in gguf_tensors(cfg, params)
    )
    write_gguf(path, cfg, tok, tensors, kind="q8_0")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(dequantized import, kept import, kept directory)."""
    tmp = tmp_path_factory.mktemp("kept")
    cfg = dataclasses.replace(LLAMA, vocab_size=259)
    write_mixed_gguf(cfg, random_params(cfg, 4), tmp / "mixed.gguf")
    import_gguf(tmp / "mixed.gguf", tmp / "float")
    import_gguf(tmp / "mixed.gguf", tmp / "kept", keep_quantized=True)
    return load_model(tmp / "float"), load_model(tmp / "kept"), tmp / "kept"


def flat(params) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_qarray)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_block_codes_decode_exactly_like_gguf(qtype):
    w = np.random.default_rng(0).normal(size=(6, 96)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (d = 0)
    t = SimpleNamespace(name="x", tensor_type=qtype, data=gguf.quants.quantize(w, qtype))
    codes, d16, m16 = block_codes(t)
    assert codes.shape == (6, 96) and d16.shape == (6, 3) and d16.dtype == np.float16
    values = codes.astype(np.float32) * np.repeat(d16.astype(np.float32), 32, axis=1)
    if m16 is not None:
        values = values + np.repeat(m16.astype(np.float32), 32, axis=1)
    np.testing.assert_array_equal(values, gguf.quants.dequantize(t.data, qtype))
    low, high = {Q.Q8_0: (-127, 127), Q.Q4_0: (-8, 7), Q.Q4_1: (0, 15)}[qtype]
    assert codes.min() >= low and codes.max() <= high


def test_q8_0_code_minus_128_is_dequantized():
    """ggml's quantizer never writes -128 (it rounds x * 127 / absmax), but a file may hold it;
    our int8 decodes [-127, 127], so such a weight is dequantized, not clipped."""
    w = np.random.default_rng(1).normal(size=(LLAMA.kv_heads * LLAMA.head_size, 64))
    data = gguf.quants.quantize(w.astype(np.float32), Q.Q8_0)
    tensors = {
        f"blk.{i}.attn_v.weight": SimpleNamespace(tensor_type=Q.Q8_0, data=data.copy())
        for i in range(2)
    }
    assert set(_kept_weights(LLAMA, tensors)) == {"blocks/attn/v/w"}
    tensors["blk.1.attn_v.weight"].data[0, 2] = 0x80  # the first code of the first block: -128
    assert _kept_weights(LLAMA, tensors) == {}


def test_kept_weights_are_qarrays_of_their_type(imported):
    _, kept, directory = imported
    leaves = flat(kept.params)
    for path, (fmt, bits) in KEPT.items():
        q = leaves[path]
        assert is_qarray(q), path
        assert (q.fmt, q.bits, q.group, q.scales.dtype) == (fmt, bits, 32, np.float16), path
    for path in ("blocks/mlp/gate/w", "blocks/mlp/up/w", "lm_head"):
        assert not is_qarray(leaves[path]), path
    stored = json.loads((directory / "source.json").read_text())["tensors"]
    assert stored["kept"] == {"Q8_0": 3, "Q4_0": 4, "Q4_1": 4}
    assert {k: sorted(v) for k, v in stored["dequantized"].items()} == {
        "Q5_0": ["blk.0.ffn_gate.weight", "blk.1.ffn_gate.weight"],
        "Q8_0": ["blk.0.ffn_up.weight"],  # its layers disagree: the stack stays float
        "Q4_1": ["blk.1.ffn_up.weight", "output.weight"],
    }
    assert stored["float"] == 5


def test_kept_dequantizes_bitwise_to_gguf(imported):
    """The dequantized import is gguf.quants.dequantize's float32, placed and un-permuted."""
    reference, kept, _ = imported
    ref = flat(reference.params)
    for path, leaf in flat(kept.params).items():
        want = np.asarray(ref[path])
        if is_qarray(leaf):
            np.testing.assert_array_equal(np.asarray(dequantize(leaf)), want, err_msg=path)
            np.testing.assert_array_equal(dequantize_reference(leaf), want, err_msg=path)
        else:
            np.testing.assert_array_equal(np.asarray(leaf), want, err_msg=path)


def logits(model) -> np.ndarray:
    """Jitted, as eval and generate run it (eagerly, `W.T` is materialised before the dot
    and the tied product may round differently from the float einsum)."""
    run = jax.jit(lambda params, ids: forward(model.config.model, params, ids).logits_BLV)
    return np.asarray(run(model.params, IDS))


def test_kept_logits_equal_the_dequantized_model(imported):
    reference, kept, _ = imported
    np.testing.assert_array_equal(logits(kept), logits(reference))


def test_tied_int4_table_gives_the_same_logits(tmp_path):
    """A tied Q4_0 token table is both the lookup (`take`) and the output product."""
    cfg = dataclasses.replace(LLAMA, vocab_size=259, tie_embeddings=True, max_seq_len=256)
    config = Config(model=cfg, data=DataConfig(tokenizer="byte"))
    export_gguf(config, random_params(cfg, 5), tmp_path / "q4.gguf", kind="q4_0")
    import_gguf(tmp_path / "q4.gguf", tmp_path / "float")
    import_gguf(tmp_path / "q4.gguf", tmp_path / "kept", keep_quantized=True)
    reference, kept = load_model(tmp_path / "float"), load_model(tmp_path / "kept")
    table = kept.params["token_embed"]
    assert is_qarray(table) and (table.fmt, table.shape) == ("int4", (259, 64))
    np.testing.assert_array_equal(logits(kept), logits(reference))


def test_from_gguf_keep_quantized_command(imported, tmp_path, capsys):
    _, _, directory = imported
    source = directory.parent / "mixed.gguf"
    args = ["convert", "from-gguf", str(source), str(tmp_path / "out"), "--keep-quantized"]
    assert main(args) == 0
    assert (tmp_path / "out" / "quantization.json").is_file()
    assert "2 layers" in capsys.readouterr().out


@pytest.mark.slow
def test_smollm2_kept_logits_equal_the_dequantized_import(tmp_path):
    """SmolLM2-135M (Q4_1 blocks, a Q8_0 tied table): 211 QArrays, the same logits (~1 min)."""
    from llm.interop import smollm2_gguf

    import_gguf(smollm2_gguf(), tmp_path / "float")
    import_gguf(smollm2_gguf(), tmp_path / "kept", keep_quantized=True)
    reference, kept = load_model(tmp_path / "float"), load_model(tmp_path / "kept")
    stored = json.loads((tmp_path / "kept" / "source.json").read_text())["tensors"]
    assert stored["kept"] == {"Q8_0": 1, "Q4_1": 210} and stored["dequantized"] == {}
    np.testing.assert_array_equal(logits(kept), logits(reference))

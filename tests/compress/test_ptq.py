"""The post-training quantization driver (llm/compress/ptq.py) and `llm quantize`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.cli import main
from llm.compress import calibration, ptq
from llm.compress.spec import PtqSpec
from llm.config import load_config
from llm.interop.model_dir import save_model
from llm.model import forward, init_params
from llm.ops import quantized as qz
from llm.tokenizers.hf import HFTokenizer
from tests.interop.hf_models import VOCAB, tiny_tokenizer_json

OVERRIDES = [f"model.vocab_size={VOCAB}", "model.d_model=64", "model.n_layers=2",
             "model.n_heads=4", "model.d_ff=128", "model.max_seq_len=64",
             "model.init_std=0.1", "model.activation=swiglu", "train.seq_len=64"]  # fmt: skip
CALIB = dict(n_seqs=4, seq_len=32, seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A float tiny model directory with a byte-level BPE tokenizer.json."""
    root = tmp_path_factory.mktemp("ptq")
    (root / "tokenizer.json").write_text(tiny_tokenizer_json())
    cfg = load_config(None, OVERRIDES).model
    save_model(root / "float", cfg, init_params(cfg, jax.random.key(0)),
               tokenizer_files={"tokenizer.json": root / "tokenizer.json"},
               source={"test": "tiny"})  # fmt: skip
    return root / "float"


@pytest.fixture(scope="module")
def calib(model_dir):
    model = load_model(model_dir)
    tokens = calibration.calibration_tokens(model.tokenizer, **CALIB)
    return model.config.model, model.params, tokens


def logits(cfg, params, tokens) -> np.ndarray:
    return np.asarray(forward(cfg, params, jnp.asarray(tokens)).logits_BLV)


def qarrays(params) -> dict[str, qz.QArray]:
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=qz.is_qarray)[0]
    return {jax.tree_util.keystr(k): v for k, v in flat if qz.is_qarray(v)}


def test_rtn_layer_by_layer_equals_quantize_params(calib):
    cfg, params, tokens = calib
    spec = PtqSpec(method="rtn", fmt="uint4", bits=3, group=32)
    whole = ptq.quantize_model(cfg, params, tokens, spec, progress=False)
    layers = tuple(ptq.rtn_layer(cfg, calibration.layer_params(params, i), None, spec)
                   for i in range(cfg.n_layers))  # fmt: skip
    stacked = calibration.stack_layers({**params, "blocks": layers})
    got, want = qarrays(stacked), qarrays(whole)
    assert sorted(got) == sorted(want) and len(got) == 7
    for name, q in got.items():
        for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(want[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_each_layer_is_calibrated_on_the_quantized_layers_before_it(calib, monkeypatch):
    """Layer 1 sees layer 0's output *after* layer 0 was quantized (GPTQ's sequential scheme)."""
    cfg, params, tokens = calib
    seen = []

    def spy(cfg, layer, x_BLD, spec):
        seen.append(x_BLD)
        return ptq.rtn_layer(cfg, layer, x_BLD, spec)

    monkeypatch.setitem(ptq.METHODS, "awq", spy)
    spec = PtqSpec(method="awq", fmt="int4", bits=3, group=0)
    ptq.quantize_model(cfg, params, tokens, spec, progress=False)
    x0 = calibration.embed_inputs(cfg, params, jnp.asarray(tokens))
    layer0 = calibration.layer_params(params, 0)
    np.testing.assert_array_equal(np.asarray(seen[0]), np.asarray(x0))
    want = calibration.run_layer(cfg, ptq.rtn_layer(cfg, layer0, x0, spec), x0)
    np.testing.assert_array_equal(np.asarray(seen[1]), np.asarray(want))
    assert not np.allclose(seen[1], calibration.run_layer(cfg, layer0, x0))


@pytest.mark.parametrize("spec", [
    PtqSpec(method="smoothquant", fmt="int8", bits=8, group=0),
    PtqSpec(method="rtn", fmt="uint4", bits=4, group=32, quantize_embeddings=True),
])  # fmt: skip
def test_saved_and_loaded_model_equals_the_in_memory_one(calib, tmp_path, spec):
    cfg, params, tokens = calib
    q = ptq.quantize_model(cfg, params, tokens, spec, progress=False)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(tiny_tokenizer_json())
    save_model(tmp_path / "q", cfg, q, tokenizer_files={"tokenizer.json": tok}, source={})
    loaded = load_model(tmp_path / "q")
    assert "token_embed" in "".join(qarrays(loaded.params)) or not spec.quantize_embeddings
    assert {k: (v.fmt, v.bits, v.act_bits) for k, v in qarrays(loaded.params).items()} == {
        k: (v.fmt, v.bits, v.act_bits) for k, v in qarrays(q).items()
    }
    np.testing.assert_array_equal(logits(cfg, loaded.params, tokens),
                                  logits(cfg, q, tokens))  # fmt: skip


@pytest.mark.slow  # GPTQ twice (command and in memory): ~25 s, more on a loaded machine
def test_command_writes_a_model_equal_to_quantize_model(model_dir, calib, tmp_path, capsys):
    cfg, params, tokens = calib
    out = tmp_path / "gptq"
    argv = ["quantize", "--checkpoint", str(model_dir), "--method", "gptq", "--bits", "4",
            "--group", "32", "--calib-seqs", "4", "--calib-len", "32",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    loaded = load_model(out)
    assert isinstance(loaded.tokenizer, HFTokenizer)
    spec = PtqSpec(method="gptq", fmt="int4", bits=4, group=32, n_calib=4, calib_len=32)
    want = ptq.quantize_model(cfg, params, tokens, spec, progress=False)
    assert len(qarrays(loaded.params)) == 7
    np.testing.assert_array_equal(logits(cfg, loaded.params, tokens), logits(cfg, want, tokens))


@pytest.mark.parametrize("extra,message", [
    (["--fmt", "nf4", "--bits", "3"], "format nf4 takes bits"),
    (["--method", "smoothquant", "--bits", "4"], "smoothquant is W8A8"),
    (["--method", "smoothquant", "--bits", "8", "--group", "32"], "use --group 0"),
    (["--group", "48"], "group 48 does not divide"),
    (["--method", "gptq", "--alpha", "0.8"], "--alpha is a SmoothQuant option"),
    (["--method", "gptq", "--group", "32", "--calib-len", "65"], "exceeds the model's max_seq_len"),
])  # fmt: skip
def test_command_refuses_bad_combinations_before_any_work(model_dir, tmp_path, capsys, extra,
                                                          message):  # fmt: skip
    out = tmp_path / "never"
    assert main(["quantize", "--checkpoint", str(model_dir), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_calibrated_methods_need_tokens(calib):
    cfg, params, _ = calib
    with pytest.raises(ValueError, match="gptq needs calibration tokens"):
        ptq.quantize_model(cfg, params, None, PtqSpec(method="gptq", group=32), progress=False)

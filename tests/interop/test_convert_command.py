"""`llm convert from-hf / to-hf` through the console entry point, and sharded checkpoints."""

from __future__ import annotations

import json

import jax
import numpy as np
from hf_models import make_hf_model, save_hf

from llm.checkpoint import load_model
from llm.cli import main
from llm.interop import export_hf, import_hf


def test_from_hf_then_to_hf_via_cli(tmp_path, capsys):
    from safetensors.numpy import load_file

    hf = save_hf(make_hf_model("qwen2", seed=5), tmp_path / "hf")
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "ours")]) == 0
    assert "2 layers, d_model 32" in capsys.readouterr().out
    for name in ("config.yaml", "params", "tokenizer.json", "tokenizer_config.json", "source.json"):
        assert (tmp_path / "ours" / name).exists(), name
    assert main(["convert", "to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    original, back = (
        load_file(str(hf / "model.safetensors")),
        load_file(str(tmp_path / "back" / "model.safetensors")),
    )
    assert set(original) == set(back)
    assert all(np.array_equal(original[k], back[k]) for k in original)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert (tmp_path / "back" / "tokenizer_config.json").is_file()


def test_unsupported_model_exits_2_naming_the_field(tmp_path, capsys):
    hf = save_hf(make_hf_model("llama", seed=1), tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config | {"model_type": "gemma2"}))
    assert main(["convert", "from-hf", str(hf), str(tmp_path / "out")]) == 2
    assert "'gemma2' is not supported" in capsys.readouterr().err


def test_sharded_export_and_import_round_trip(tmp_path):
    hf = save_hf(make_hf_model("llama", seed=2), tmp_path / "hf")
    import_hf(hf, tmp_path / "ours")
    m = load_model(tmp_path / "ours")
    cfg, params, tok = m.config, m.params, m.tokenizer
    export_hf(cfg.model, params, tmp_path / "sharded", tokenizer=tok, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    (tmp_path / "sharded" / "tokenizer.json").write_text((hf / "tokenizer.json").read_text())
    import_hf(tmp_path / "sharded", tmp_path / "again")
    m = load_model(tmp_path / "again")
    _, params2, _ = m.config, m.params, m.tokenizer
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_missing_and_unknown_tensors_are_named(tmp_path):
    import pytest
    from safetensors.numpy import load_file, save_file

    hf = save_hf(make_hf_model("llama", seed=3), tmp_path / "hf")
    tensors = load_file(str(hf / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        import_hf(hf, tmp_path / "a")
    tensors["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.extra\.weight"):
        import_hf(hf, tmp_path / "b")


def test_bfloat16_import_is_the_rounded_float32_import(tmp_path):
    import jax.numpy as jnp

    hf = save_hf(make_hf_model("gpt2", seed=4), tmp_path / "hf")
    import_hf(hf, tmp_path / "f32")
    import_hf(hf, tmp_path / "bf16", param_dtype="bfloat16")
    m = load_model(tmp_path / "bf16")
    cfg, p16, _ = m.config, m.params, m.tokenizer
    m = load_model(tmp_path / "f32")
    _, p32, _ = m.config, m.params, m.tokenizer
    assert cfg.model.param_dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32), strict=True):
        assert a.dtype == jnp.bfloat16
        assert np.array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))

"""Config parsing: every kind of bad input names the key; the resolved config round-trips."""

from pathlib import Path

import pytest

from llm.config import Config, ConfigError, ModelConfig, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def error_of(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_unknown_key_suggests_closest():
    assert "model.n_layer: unknown key; did you mean 'n_layers'?" in error_of(["model.n_layer=2"])


def test_unknown_section_suggests_closest():
    assert "modle: unknown key; did you mean 'model'?" in error_of(["modle.d_model=2"])


def test_bad_type_names_key():
    message = error_of(["model.n_layers=true"])
    assert "model.n_layers: Input should be a valid integer (got True)" in message
    assert "model.d_model" in error_of(["model.d_model=8.5"])
    assert "optim.lr" in error_of(["optim.lr=fast"])


def test_bad_enum_lists_options_and_suggests():
    message = error_of(["model.activation=swigl"])
    assert "model.activation: 'swigl' is not one of" in message
    assert "did you mean 'swiglu'?" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.d_model=100", "model.n_heads=3"], "model.n_heads: d_model=100 is not divisible"),
        (["model.n_kv_heads=3"], "model.n_kv_heads: n_heads=4 is not divisible by n_kv_heads=3"),
        (["model.n_layers=-1"], "model.n_layers: must be positive, got -1"),
        (["model.vocab_size=0"], "model.vocab_size: must be positive, got 0"),
        (["model.rope_scaling=linear"], "model.rope_scaling: is 'linear' but pos_encoding"),
        (["model.attn_dropout=1.5"], "model.attn_dropout: must be in [0, 1)"),
        (["train.seq_len=512"], "train.seq_len: 512 exceeds model.max_seq_len=256"),
        (["mesh.data=-1", "mesh.fsdp=-1"], "mesh.data: at most one mesh axis may be -1"),
    ],
)
def test_inconsistent_values_name_key(overrides, expected):
    assert expected in error_of(overrides)


def test_all_errors_reported_together():
    message = error_of(["model.n_layer=2", "optim.lrr=1"])
    assert "model.n_layer" in message and "optim.lrr" in message


def test_malformed_override():
    assert "not of the form section.key=value" in error_of(["model.n_layers"])


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["optim.lr=1e-3", "model.n_kv_heads=null", "model.qk_norm=true"])
    assert cfg.optim.lr == 1e-3 and cfg.model.n_kv_heads is None and cfg.model.qk_norm is True


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/file.yaml")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_round_trip(preset, tmp_path):
    cfg = load_config(preset, ["train.steps=7"])
    assert isinstance(cfg, Config) and cfg.train.steps == 7
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_configs_are_hashable_static_args():
    assert hash(load_config()) == hash(load_config())

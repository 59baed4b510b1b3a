"""LoRA, DoRA and IA3 export: Hugging Face PEFT loads our adapter onto the transformers model
and gives our logits (tiny random Llama with Llama-3.1 RoPE and attention biases, float32)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from hf_models import hf_logits, make_hf_model, max_rel_err, save_hf
from train_fixtures import SyntheticBatches

from llm.checkpoint import load_model
from llm.config import PeftConfig
from llm.model import forward, logical_axes
from llm.peft.export import CONFIG, WEIGHTS, export_adapter, export_ia3, export_lora
from llm.train.trainable import merge, model_params, trainable_from_config

IDS = np.random.default_rng(0).integers(0, 300, size=(2, 12)).astype(np.int32)
TARGET = ("blocks/attn/(q|k|v|o)/w", "blocks/mlp/(gate|up|down)/w")


def _adapter(cfg, params):
    """(trainable, frozen) with every B random (a zero B would hide a transposed layout)."""
    split = trainable_from_config(cfg).split(params, logical_axes(cfg.model), jax.random.key(1))
    leaves, tree = jax.tree_util.tree_flatten_with_path(split.params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    new = [
        jax.random.normal(k, x.shape, x.dtype) * 0.2 if path[-1].key == "b" else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, new), split.frozen


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_our_adapter_with_our_logits(tmp_path, rslora):
    from peft import PeftModel

    hf_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")
    loaded = load_model(hf_dir)
    peft = PeftConfig(method="lora", rank=4, alpha=8.0, rslora=rslora, target=TARGET)
    cfg = dataclasses.replace(loaded.config, peft=peft)
    params, frozen = _adapter(cfg, loaded.params)
    ours = np.asarray(forward(cfg.model, model_params(params, frozen), IDS).logits_BLV)

    out = export_lora(cfg, merge(params["lora"], frozen["lora"]), tmp_path / "adapter")
    config = json.loads((out / CONFIG).read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj",
                                        "q_proj", "up_proj", "v_proj"]  # fmt: skip
    assert (out / WEIGHTS).is_file()
    base = make_hf_model("llama")
    base_logits = hf_logits(base, IDS)
    theirs = hf_logits(PeftModel.from_pretrained(base, out).eval(), IDS)
    assert max_rel_err(ours, base_logits) > 1e-2  # the adapter changes the logits
    err = max_rel_err(ours, theirs)
    assert err < 1e-5, f"max relative logit error {err:.2e} against PEFT"


def test_export_refuses_gpt2_and_a_scale_the_config_does_not_give(tmp_path):
    from hf_models import make_hf_model as make

    hf_dir = save_hf(make("gpt2"), tmp_path / "gpt2")
    loaded = load_model(hf_dir)
    peft = PeftConfig(method="lora", rank=2, target=("blocks/attn/q/w",))
    cfg = dataclasses.replace(loaded.config, peft=peft)
    params, frozen = _adapter(cfg, loaded.params)
    adapter = merge(params["lora"], frozen["lora"])
    with pytest.raises(ValueError, match="GPT-2 fuses q/k/v"):
        export_lora(cfg, adapter, tmp_path / "a")
    other = dataclasses.replace(cfg, peft=dataclasses.replace(peft, alpha=3.0))
    with pytest.raises(ValueError, match=r"scale 8\.0, but peft\.alpha=3\.0"):
        export_lora(other, adapter, tmp_path / "b")


def _val():
    return SyntheticBatches(8, 16, seed=1, limit=2)


def _trained(tiny, hf_dir, *overrides):
    """(run config on the source's architecture, trained params, frozen) after 3 real steps
    (lr 1e-2, so the adapter moves well away from its init in every leaf)."""
    from llm.train.loop import train

    cfg = tiny("train.steps=3", "optim.lr=1e-2", f"train.init_from={hf_dir}", *overrides)
    result = train(cfg, train_batches=SyntheticBatches(8, 16), val_batches=_val)
    state = result["state"]
    cfg = dataclasses.replace(load_model(hf_dir).config, peft=cfg.peft)
    return cfg, state.params, state.frozen


@pytest.mark.parametrize(
    ("method", "modules", "feedforward"),
    [
        ("dora", ["down_proj", "o_proj", "q_proj", "v_proj"], None),
        ("ia3", ["down_proj", "k_proj", "o_proj", "v_proj"], ["down_proj", "o_proj"]),
    ],
)
def test_peft_loads_a_trained_dora_or_ia3_adapter_with_our_logits(
    tiny, tmp_path, method, modules, feedforward
):
    """q/v/k read "embed" (DoRA: norm per output row; IA3: output side, bias included), o and
    down write it (IA3: input side, PEFT's feedforward_modules)."""
    from peft import PeftModel

    hf_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")
    attn = "q|v|o" if method == "dora" else "k|v|o"
    target = f"peft.target=[blocks/attn/({attn})/w, blocks/mlp/down/w]"
    cfg, params, frozen = _trained(tiny, hf_dir, f"peft.method={method}", "peft.rank=4", target)
    adapter = merge(params[method], frozen.get(method, {}))
    ours = np.asarray(forward(cfg.model, model_params(params, frozen), IDS).logits_BLV)
    out = export_adapter(cfg, adapter, tmp_path / "adapter")
    config = json.loads((out / CONFIG).read_text())
    assert config["target_modules"] == modules
    if method == "dora":
        assert config["use_dora"] is True and config["peft_type"] == "LORA"
    else:
        assert config["feedforward_modules"] == feedforward and config["peft_type"] == "IA3"
    base = make_hf_model("llama")
    base_logits = hf_logits(base, IDS)
    theirs = hf_logits(PeftModel.from_pretrained(base, out).eval(), IDS)
    assert max_rel_err(ours, base_logits) > 1e-3  # three steps changed the model
    err = max_rel_err(ours, theirs)
    assert err < 1e-5, f"max relative logit error {err:.2e} against PEFT ({method})"


def test_export_refuses_a_method_mismatch(tmp_path):
    hf_dir = save_hf(make_hf_model("llama"), tmp_path / "hf")
    loaded = load_model(hf_dir)
    cfg = dataclasses.replace(loaded.config, peft=PeftConfig(method="dora", rank=2))
    params, frozen = _adapter(cfg, loaded.params)
    dora = merge(params["dora"], frozen["dora"])
    as_lora = dataclasses.replace(cfg, peft=PeftConfig(method="lora", rank=2))
    with pytest.raises(ValueError, match=r"peft\.method=lora, but .* has DoRA's magnitude"):
        export_adapter(as_lora, dora, tmp_path / "a")
    with pytest.raises(ValueError, match=r"IA3 export: peft\.method is 'dora'"):
        export_ia3(cfg, dora, tmp_path / "b")

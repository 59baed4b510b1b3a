"""LoRA export: Hugging Face PEFT loads our adapter onto the transformers model and gives our
logits (tiny random Llama with Llama-3.1 RoPE and attention biases, float32)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from hf_models import hf_logits, make_hf_model, max_rel_err, save_hf

from llm.checkpoint import load_model
from llm.config import PeftConfig
from llm.model import forward, logical_axes
from llm.peft.export import CONFIG, WEIGHTS, export_lora
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

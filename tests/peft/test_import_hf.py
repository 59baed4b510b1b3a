"""LoRA import: an adapter made by Hugging Face PEFT on a tiny random transformers Llama gives
PeftModel's logits once imported and merged, exports back to the same files, and what the
merged form cannot represent is refused by name."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hf_models import hf_logits, make_hf_model, max_rel_err, save_hf

from llm.checkpoint import load_model
from llm.model import forward
from llm.peft import apply_lora
from llm.peft.export import CONFIG, WEIGHTS, export_lora
from llm.peft.import_hf import import_lora
from tests.peft.peft_adapters import make_peft_adapter

IDS = np.random.default_rng(0).integers(0, 300, size=(2, 12)).astype(np.int32)


@pytest.fixture
def base(tmp_path):
    return load_model(save_hf(make_hf_model("llama"), tmp_path / "hf"))


@pytest.mark.parametrize("rslora", [False, True])
def test_imported_adapter_gives_peft_logits(tmp_path, base, rslora):
    from peft import PeftModel

    out = make_peft_adapter(tmp_path / "adapter", rslora=rslora)
    imported = import_lora(out, base.config.model)
    assert imported.peft.rank == 4 and imported.peft.alpha == 8.0
    assert imported.peft.rslora == rslora
    assert float(imported.frozen["lora"]["blocks"]["attn"]["q"]["w"]["scale"]) == (
        8 / 2 if rslora else 8 / 4
    )
    assert set(imported.params["lora"]["blocks"]["mlp"]["down"]["w"]) == {"a", "b"}
    ours = np.asarray(forward(base.config.model, apply_lora(base.params, imported.adapter),
                              IDS).logits_BLV)  # fmt: skip
    theirs = hf_logits(PeftModel.from_pretrained(make_hf_model("llama"), out).eval(), IDS)
    assert max_rel_err(ours, hf_logits(make_hf_model("llama"), IDS)) > 1e-2  # B is not zero
    err = max_rel_err(ours, theirs)
    assert err < 1e-5, f"max relative logit error {err:.2e} against PeftModel"


def test_export_of_import_reproduces_the_files(tmp_path, base):
    from safetensors.numpy import load_file

    src = make_peft_adapter(tmp_path / "src", seed=3, modules=["q_proj", "v_proj", "down_proj"])
    imported = import_lora(src, base.config.model)
    cfg = dataclasses.replace(base.config, peft=imported.peft)
    back = export_lora(cfg, imported.adapter, tmp_path / "back")
    want, got = load_file(str(src / WEIGHTS)), load_file(str(back / WEIGHTS))
    assert set(want) == set(got) and len(want) == 2 * 3 * 2  # A and B, 3 modules, 2 layers
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    a, b = (json.loads((d / CONFIG).read_text()) for d in (src, back))
    for key in ("peft_type", "r", "lora_alpha", "use_rslora", "bias", "fan_in_fan_out"):
        assert a[key] == b[key], key
    assert sorted(a["target_modules"]) == b["target_modules"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "use_dora=True cannot be imported: DoRA"),
        ({"bias": "all"}, "bias='all' cannot be imported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save=.* cannot be imported"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out=True cannot be imported"),
        ({"rank_pattern": {"q_proj": 2}}, "rank_pattern=.* per-module ranks"),
        ({"target_modules": ["q_proj", "lm_head"]}, "target module 'lm_head' is not one we"),
        ({"peft_type": "IA3"}, "only LORA imports"),
    ],
)
def test_refuses_what_the_merged_form_cannot_represent(tmp_path, base, change, message):
    src = make_peft_adapter(tmp_path / "a", modules=["q_proj", "v_proj"])
    config = json.loads((src / CONFIG).read_text())
    (src / CONFIG).write_text(json.dumps(config | change))
    with pytest.raises(ValueError, match=message):
        import_lora(src, base.config.model)


def test_refuses_a_base_of_other_shape_and_unexplained_tensors(tmp_path, base):
    from safetensors.numpy import load_file, save_file

    src = make_peft_adapter(tmp_path / "a", modules=["q_proj", "v_proj"])
    wider = dataclasses.replace(base.config.model, d_model=48)
    with pytest.raises(
        ValueError, match=r"(q|v)_proj.lora_A.weight has shape \(4, 32\).* need \(4, 48\)"
    ):
        import_lora(src, wider)
    deeper = dataclasses.replace(base.config.model, n_layers=3)
    with pytest.raises(ValueError, match=r"layers.2.self_attn.(q|v)_proj.lora_A.weight is missing"):
        import_lora(src, deeper)
    tensors = load_file(str(src / WEIGHTS))
    extra = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    save_file(tensors | {extra: np.zeros((4, 32), np.float32)}, str(src / WEIGHTS))
    with pytest.raises(ValueError, match=r"1 tensor.* the config does not explain, e.g. .*k_proj"):
        import_lora(src, base.config.model)

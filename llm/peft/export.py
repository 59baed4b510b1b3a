"""A LoRA adapter in Hugging Face PEFT's format: adapter_config.json + adapter_model.safetensors.

    export_lora(cfg, adapter, "out/")      # then in PyTorch:
    # PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "out/")

PEFT names each tensor by the base module it adapts:
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r], where
<module> is the Hugging Face weight's name without `.weight` (llm/interop/hf_weights.py's
table, e.g. `model.layers.3.self_attn.q_proj`), and applies W + scale * B @ A with
scale = lora_alpha / r (or / sqrt(r) with `use_rslora`), the same scale as ours.

Llama-family weights are `nn.Linear` (out, in): our weight flattened to [in, out] and
transposed. So lora_A = A[layer] flattened to [in, r] and transposed, lora_B = B[layer]
flattened to [r, out] and transposed. Export checks that flattening against the name
table's own `save` on a probe array for every target, so a layout it does not match (GPT-2's
fused Conv1D c_attn) is refused instead of written wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.interop.hf_config import hf_model_type
from llm.interop.hf_weights import rules_for
from llm.peft.lora import entries
from llm.typing import PyTree

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _rules_by_path(model_cfg: Any) -> dict[str, Any]:
    if hf_model_type(model_cfg) == "gpt2":
        raise ValueError(
            "LoRA export: GPT-2 fuses q/k/v into one Conv1D (c_attn), which PEFT adapts as "
            "one module; only Llama-family models (separate q/k/v/o, gate/up/down) export"
        )
    return {"/".join(r.ours[0]): r for r in rules_for(model_cfg) if len(r.ours) == 1}


def _check_layout(path: str, rule: Any, entry: dict[str, np.ndarray]) -> None:
    """The HF weight is our [in, out]-flattened weight transposed (else refuse)."""
    a, b = entry["a"], entry["b"]
    in_flat, out_flat = math.prod(a.shape[1:-1]), math.prod(b.shape[2:])
    probe = np.arange(in_flat * out_flat, dtype=np.float32)
    ours = probe.reshape(*a.shape[1:-1], *b.shape[2:])
    if not np.array_equal(rule.save(ours), probe.reshape(in_flat, out_flat).T):
        raise ValueError(f"LoRA export: {path} ({rule.hf}) is not an (out, in) nn.Linear weight")


def lora_tensors(model_cfg: Any, adapter: PyTree) -> dict[str, np.ndarray]:
    """{PEFT tensor name: array} for every layer of every adapted weight."""
    rules = _rules_by_path(model_cfg)
    out = {}
    for path, entry in sorted(entries(adapter).items()):
        if path not in rules or "{i}" not in rules[path].hf:
            raise ValueError(f"LoRA export: {path} has no per-layer Hugging Face weight name")
        entry = {k: np.asarray(v, np.float32) for k, v in entry.items()}
        _check_layout(path, rules[path], entry)
        rank = entry["a"].shape[-1]
        module = rules[path].hf.removesuffix(".weight")
        for i in range(entry["a"].shape[0]):
            name = "base_model.model." + module.replace("{i}", str(i))
            a_t = entry["a"][i].reshape(-1, rank).T
            b_t = entry["b"][i].reshape(rank, -1).T
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a_t)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b_t)
    return out


def adapter_config(cfg: Any, adapter: PyTree) -> dict[str, Any]:
    """PEFT's LoraConfig fields for this adapter (scales checked against `cfg.peft`)."""
    peft = cfg.peft
    targets = entries(adapter)
    for path, entry in targets.items():
        if not math.isclose(float(entry["scale"]), peft.scale, rel_tol=1e-6):
            raise ValueError(
                f"LoRA export: {path} has scale {float(entry['scale'])}, but peft.alpha="
                f"{peft.alpha}, rank={peft.rank}, rslora={peft.rslora} give {peft.scale}"
            )
    rules = _rules_by_path(cfg.model)
    modules = sorted({rules[p].hf.removesuffix(".weight").rsplit(".", 1)[-1] for p in targets})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": peft.rank,
        "lora_alpha": peft.alpha,
        "use_rslora": peft.rslora,
        "lora_dropout": peft.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }


def export_lora(cfg: Any, adapter: PyTree, out: str | Path) -> Path:
    """Writes the adapter (A, B and scale per target, e.g. a run's params/frozen "lora"
    merged) as a PEFT adapter directory; returns it."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = adapter_config(cfg, adapter)
    save_file(lora_tensors(cfg.model, adapter), str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out

"""LoRA, DoRA and IA3 adapters in Hugging Face PEFT's format: adapter_config.json +
adapter_model.safetensors.

    export_adapter(cfg, adapter, "out/")   # by cfg.peft.method (export_lora: LoRA, DoRA)
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

DoRA (llm/peft/dora.py) is PEFT's LoRA with `use_dora: true` plus
`<module>.lora_magnitude_vector` [out] per layer: our m[layer] flattened over the output axes
(the (out, in) weight's rows, over which PEFT's column norm is taken per row).

IA3 (llm/peft/ia3.py) is `peft_type: IA3` with `<module>.ia3_l` per layer: [out, 1] for a
weight whose output is rescaled (k, v), [1, in] for one whose input is (down, o), which PEFT
calls `feedforward_modules`. PEFT multiplies the whole output, bias included, as we do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.interop.hf_config import hf_model_type
from llm.interop.hf_weights import rules_for
from llm.model import abstract_params
from llm.peft import ia3
from llm.peft.dora import MAGNITUDE
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


def _check_layout(path: str, rule: Any, in_shape: tuple, out_shape: tuple) -> None:
    """The HF weight is our [in, out]-flattened weight transposed (else refuse)."""
    in_flat, out_flat = math.prod(in_shape), math.prod(out_shape)
    probe = np.arange(in_flat * out_flat, dtype=np.float32)
    ours = probe.reshape(*in_shape, *out_shape)
    if not np.array_equal(rule.save(ours), probe.reshape(in_flat, out_flat).T):
        raise ValueError(f"PEFT export: {path} ({rule.hf}) is not an (out, in) nn.Linear weight")


def _module(rules: dict[str, Any], path: str) -> str:
    """The per-layer Hugging Face module name ("model.layers.{i}.self_attn.k_proj")."""
    if path not in rules or "{i}" not in rules[path].hf:
        raise ValueError(f"PEFT export: {path} has no per-layer Hugging Face weight name")
    return rules[path].hf.removesuffix(".weight")


def lora_tensors(model_cfg: Any, adapter: PyTree) -> dict[str, np.ndarray]:
    """{PEFT tensor name: array} for every layer of every adapted weight."""
    rules = _rules_by_path(model_cfg)
    out = {}
    for path, entry in sorted(entries(adapter).items()):
        module = _module(rules, path)
        entry = {k: np.asarray(v, np.float32) for k, v in entry.items()}
        _check_layout(path, rules[path], entry["a"].shape[1:-1], entry["b"].shape[2:])
        rank = entry["a"].shape[-1]
        for i in range(entry["a"].shape[0]):
            name = "base_model.model." + module.replace("{i}", str(i))
            a_t = entry["a"][i].reshape(-1, rank).T
            b_t = entry["b"][i].reshape(rank, -1).T
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a_t)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b_t)
            if MAGNITUDE in entry:  # DoRA
                out[f"{name}.lora_magnitude_vector"] = entry[MAGNITUDE][i].reshape(-1)
    return out


def adapter_config(cfg: Any, adapter: PyTree) -> dict[str, Any]:
    """PEFT's LoraConfig fields for this adapter (scales checked against `cfg.peft`)."""
    peft = cfg.peft
    targets = entries(adapter)
    dora = peft.method == "dora"
    for path, entry in targets.items():
        if (MAGNITUDE in entry) != dora:
            raise ValueError(
                f"PEFT export: peft.method={peft.method}, but {path} "
                f"{'lacks' if dora else 'has'} DoRA's magnitude m"
            )
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
        "use_dora": dora,
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
    return _write(out, adapter_config(cfg, adapter), lora_tensors(cfg.model, adapter))


def ia3_tensors(model_cfg: Any, adapter: PyTree) -> dict[str, np.ndarray]:
    """{PEFT tensor name: ia3_l} for every layer of every rescaled weight."""
    rules = _rules_by_path(model_cfg)
    weights = {p: x.shape for p, x in _flat_params(abstract_params(model_cfg)).items()}
    out = {}
    for path, l in sorted(ia3.vectors(adapter).items()):
        module, shape, l = _module(rules, path), weights[path], np.asarray(l, np.float32)
        output_side = ia3.is_output_side(l.shape, shape)
        n_in = 1 if output_side else l.ndim - 2
        _check_layout(path, rules[path], shape[1 : 1 + n_in], shape[1 + n_in :])
        side = (-1, 1) if output_side else (1, -1)  # [out, 1] or [1, in], as PEFT shapes it
        for i in range(l.shape[0]):
            name = "base_model.model." + module.replace("{i}", str(i))
            out[f"{name}.ia3_l"] = np.ascontiguousarray(l[i].reshape(side))
    return out


def _flat_params(tree: PyTree) -> dict[str, Any]:
    """{"blocks/attn/k/w": leaf} of a nested dict of params."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in _flat_params(value).items()})
        else:
            flat[key] = value
    return flat


def ia3_config(cfg: Any, adapter: PyTree) -> dict[str, Any]:
    """PEFT's IA3Config fields: the rescaled modules and which of them rescale inputs."""
    rules = _rules_by_path(cfg.model)
    weights = _flat_params(abstract_params(cfg.model))
    modules, feedforward = set(), set()
    for path, l in ia3.vectors(adapter).items():
        name = _module(rules, path).rsplit(".", 1)[-1]
        modules.add(name)
        if not ia3.is_output_side(l.shape, weights[path].shape):
            feedforward.add(name)
    return {
        "peft_type": "IA3",
        "task_type": "CAUSAL_LM",
        "target_modules": sorted(modules),
        "feedforward_modules": sorted(feedforward),
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }


def _write(out: str | Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def export_ia3(cfg: Any, adapter: PyTree, out: str | Path) -> Path:
    """Writes an IA3 adapter (a run's params "ia3") as a PEFT adapter directory."""
    if cfg.peft.method != "ia3":
        raise ValueError(f"IA3 export: peft.method is {cfg.peft.method!r}, not 'ia3'")
    return _write(out, ia3_config(cfg, adapter), ia3_tensors(cfg.model, adapter))


def export_adapter(cfg: Any, adapter: PyTree, out: str | Path) -> Path:
    """Writes the adapter of `cfg.peft.method` (lora, dora or ia3) in PEFT's format."""
    if cfg.peft.method == "ia3":
        return export_ia3(cfg, adapter, out)
    if cfg.peft.method in ("lora", "dora"):
        return export_lora(cfg, adapter, out)
    raise ValueError(f"PEFT export: peft.method={cfg.peft.method!r} has no exporter here")

"""A Hugging Face PEFT LoRA adapter directory -> our adapter tree (the inverse of export.py).

    imported = import_lora("adapter_dir/", cfg.model)   # adapter_config.json + safetensors
    model = apply_lora(base_params, imported.adapter)   # W + scale * A @ B, as PeftModel runs
    imported.params, imported.frozen                    # {"lora": A/B}, {"lora": scale}

PEFT stores `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]
per adapted `nn.Linear` (Hu et al. 2021, arXiv:2106.09685), and its config says r,
lora_alpha, use_rslora (Kalajdzievski 2023, arXiv:2312.03732) and the target modules.
Our A [layers, *in, r] is lora_A transposed and reshaped to the base weight's input axes,
our B [layers, r, *out] lora_B transposed and reshaped to its output axes, stacked over
layers; the scale is the same alpha / r (or alpha / sqrt(r)).

Only what the merged form W + scale * A @ B represents is read. Anything else that changes
the adapter's function (DoRA, trained biases, modules_to_save, fan_in_fan_out, per-module
ranks or alphas, a subset of layers, a target module that is not one of the blocks'
q/k/v/o/gate/up/down projections) is refused with an error naming the field or tensor,
and every tensor in the file must be used: nothing is skipped. `lora_dropout` is a
training-time setting that leaves the adapter's function unchanged, so it is not refused
(the imported config says 0.0, the only value our merged form trains with).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import ModelConfig
from llm.config.peft import PeftConfig
from llm.interop.hf_config import hf_model_type
from llm.interop.hf_weights import rules_for
from llm.model import abstract_params, logical_axes
from llm.peft.lora import NAME, Target, _nest, find_targets
from llm.typing import PyTree

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")
# adapter_config.json fields that change what the adapter computes -> (harmless values, why)
REFUSED = {
    "use_dora": ((False, None), "DoRA's magnitude vector is not a LoRA update"),
    "bias": (("none", None), "trained biases are not part of W + scale * A @ B"),
    "lora_bias": ((False, None), "a bias on lora_B is not part of W + scale * A @ B"),
    "modules_to_save": ((None, []), "fully trained module copies are not an adapter"),
    "fan_in_fan_out": ((False, None), "(in, out) Conv1D weights (GPT-2) are not supported"),
    "rank_pattern": (({}, None), "per-module ranks are not supported (one r per adapter)"),
    "alpha_pattern": (({}, None), "per-module alphas are not supported (one scale)"),
    "layers_to_transform": ((None, []), "an adapter covers every layer of its targets"),
    "layer_replication": ((None, []), "replicated layers change the base model"),
    "exclude_modules": ((None, [], ""), "excluded modules are not supported"),
    "target_parameters": ((None, []), "adapting nn.Parameters is not supported"),
    "trainable_token_indices": ((None, {}, []), "trained embedding rows are not an adapter"),
    "alora_invocation_tokens": ((None, []), "activated LoRA depends on the prompt"),
    "use_qalora": ((False, None), "QALoRA's pooled input is not a LoRA update"),
}
# PEFT's shorthand for every linear layer but the output head
ALL_LINEAR = "all-linear"


@dataclasses.dataclass(frozen=True)
class ImportedLora:
    """An imported adapter: its peft config and its tree ({"a", "b", "scale"} per target)."""

    peft: PeftConfig  # method lora, r, alpha, rslora, target = our param paths
    adapter: PyTree  # what `apply_lora` / `merge` take
    source: Path

    @property
    def params(self) -> PyTree:
        """{"lora": A and B}: the part a run trains."""
        return {NAME: _pick(self.adapter, lambda leaf: leaf != "scale")}

    @property
    def frozen(self) -> PyTree:
        """{"lora": scale}: the part a run keeps frozen."""
        return {NAME: _pick(self.adapter, lambda leaf: leaf == "scale")}


def read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json, with every field that the merged LoRA form cannot represent
    refused by name."""
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory: no {CONFIG}")
    config = json.loads(file.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type {config.get('peft_type')!r}; only LORA imports")
    for key, (ok, why) in REFUSED.items():
        if config.get(key) not in ok:
            raise ValueError(f"{file}: {key}={config[key]!r} cannot be imported: {why}")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), int | float) or config[key] <= 0:
            raise ValueError(f"{file}: {key}={config.get(key)!r} must be a positive number")
    return config


def _modules(model_cfg: ModelConfig) -> dict[str, tuple[str, Any]]:
    """{HF module name with "{i}": (our param path, rule)} for the adaptable block weights."""
    if hf_model_type(model_cfg) == "gpt2":
        raise ValueError(
            "LoRA import: GPT-2 fuses q/k/v into one Conv1D (c_attn); only Llama-family "
            "bases (separate q/k/v/o, gate/up/down) import"
        )
    out = {}
    for rule in rules_for(model_cfg):
        path = "/".join(rule.ours[0])
        if len(rule.ours) == 1 and rule.hf.endswith(".weight") and path.endswith("/w"):
            # "{j}": one HF module per MoE expert; our LoRA does not adapt experts (lora.py)
            if "{i}" in rule.hf and "{j}" not in rule.hf and path.startswith("blocks/"):
                out[rule.hf.removesuffix(".weight")] = (path, rule)
    return out


def _targeted(config: dict[str, Any], modules: list[str], where: Path) -> list[str]:
    """The HF module names (with "{i}") that `target_modules` selects, as PEFT matches them:
    a string is a regex on the whole module name, a list names module-name suffixes."""
    targets = config.get("target_modules")
    if targets == ALL_LINEAR:
        return modules
    if isinstance(targets, str):
        return [m for m in modules if re.fullmatch(targets, m.replace("{i}", "0"))]
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"{where / CONFIG}: target_modules={targets!r} names no module")
    chosen = []
    for name in targets:
        hits = [m for m in modules if m == name or m.endswith("." + name)]
        if not hits:
            short = sorted({m.rsplit(".", 1)[-1] for m in modules})
            raise ValueError(
                f"{where / CONFIG}: target module {name!r} is not one we can adapt "
                f"(LoRA imports the block projections {short})"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # optional dependency (the `interop` extra)

    file = path / WEIGHTS
    if not file.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir()))
        raise FileNotFoundError(f"{path}: no {WEIGHTS} (found {found}); PyTorch .bin "
                                "adapters are not read: save with safe_serialization")  # fmt: skip
    return {k: np.asarray(v, np.float32) for k, v in load_file(str(file)).items()}


def _check_layout(module: str, rule: Any, t: Target) -> None:
    """The HF weight must be our [in, out]-flattened weight transposed, as export assumes."""
    n_in, n_out = math.prod(t.in_shape), math.prod(t.out_shape)
    probe = np.arange(n_in * n_out, dtype=np.float32).reshape(n_out, n_in)
    (ours,) = rule.load(probe)
    if not np.array_equal(ours, probe.T.reshape(*t.in_shape, *t.out_shape)):
        raise ValueError(f"LoRA import: {module} is not an (out, in) nn.Linear weight")


def _stack(tensors: dict, module: str, t: Target, rank: int, used: set, where: Path) -> tuple:
    """(A [layers, *in, r], B [layers, r, *out]) from the per-layer lora_A / lora_B."""
    n_in, n_out = math.prod(t.in_shape), math.prod(t.out_shape)
    a_layers, b_layers = [], []
    for i in range(t.shape[0]):
        name = PREFIX + module.replace("{i}", str(i))
        for side, want, out in (("A", (rank, n_in), a_layers), ("B", (n_out, rank), b_layers)):
            key = f"{name}.lora_{side}.weight"
            if key not in tensors:
                raise ValueError(
                    f"LoRA import {where}: {key} is missing (target_modules "
                    f"selects {module} in all {t.shape[0]} layers of the base)"
                )
            if tensors[key].shape != want:
                raise ValueError(
                    f"LoRA import {where}: {key} has shape {tensors[key].shape}; "
                    f"r={rank} and the base's {t.path} {t.shape} need {want}"
                )
            out.append(tensors[key])
            used.add(key)
    a = np.stack([x.T.reshape(*t.in_shape, rank) for x in a_layers])
    b = np.stack([x.T.reshape(rank, *t.out_shape) for x in b_layers])
    return a, b


def import_lora(path: str | Path, model_cfg: ModelConfig) -> ImportedLora:
    """Reads a PEFT LoRA directory made for a base with architecture `model_cfg`; every
    mismatch with that base (module, layer count, shape) is an error naming the tensor."""
    path = Path(path)
    config = read_config(path)
    modules = _modules(model_cfg)
    chosen = _targeted(config, list(modules), path)
    rank = config["r"]
    if not isinstance(rank, int):
        raise ValueError(f"{path / CONFIG}: r={rank!r} must be an integer")
    peft = PeftConfig(method="lora", rank=rank, alpha=float(config["lora_alpha"]),
                      rslora=bool(config.get("use_rslora", False)),
                      target=tuple(re.escape(modules[m][0]) for m in chosen))  # fmt: skip
    targets = {t.path: t for t in find_targets(peft, abstract_params(model_cfg),
                                               logical_axes(model_cfg))}  # fmt: skip
    dtypes = {p: x.dtype for p, x in _leaves(abstract_params(model_cfg)).items()}
    tensors, used, entries = _read_tensors(path), set(), {}
    for module in chosen:
        ours, rule = modules[module]
        _check_layout(module, rule, targets[ours])
        a, b = _stack(tensors, module, targets[ours], rank, used, path)
        entries[ours] = {"a": a.astype(dtypes[ours]), "b": b.astype(dtypes[ours]),
                         "scale": np.asarray(peft.scale, np.float32)}  # fmt: skip
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"LoRA import {path / WEIGHTS}: it holds {len(extra)} tensor(s) the "
                         f"config does not explain, e.g. {extra[0]}")  # fmt: skip
    return ImportedLora(peft, _nest(entries), path)


def _leaves(tree: PyTree, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _pick(tree: dict, keep) -> dict:
    """The nested dict with only the leaves whose key passes `keep`."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _pick(value, keep)
        elif keep(key):
            out[key] = value
    return out

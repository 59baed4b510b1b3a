"""Mixtral and Qwen2-MoE checkpoints <-> our mixture-of-experts Transformer (llm/model/moe.py).

Both are the Llama-family decoder with each MLP replaced by top-k routed SwiGLU experts, so
attention, norms and RoPE go through the Llama reading and rules (hf_config.py,
hf_weights.py) and only the MLP differs:

* Mixtral (Jiang et al. 2024, arXiv:2401.04088): `block_sparse_moe.gate` [E, D] routes by
  softmax over all experts, the top-k probabilities renormalised to sum to 1; expert j is
  `experts.{j}.w1` (gate), `w3` (up), `w2` (down), each of width `intermediate_size`.
* Qwen2-MoE (Qwen1.5-MoE, Qwen team 2024; the shared expert of DeepSeekMoE, Dai et al. 2024,
  arXiv:2401.06066): `mlp.gate` [E, D] softmax, top-k kept as they are unless
  `norm_topk_prob`; experts of width `moe_intermediate_size`; plus an always-on
  `shared_expert` of width `shared_expert_intermediate_size` scaled by
  sigmoid(`shared_expert_gate` . x). Only the uniform layout is read: every layer is MoE
  (`decoder_sparse_step` 1, no `mlp_only_layers`); anything else is refused by name.

Transformers computes every expert on every token it is routed to (dropless), so an import
sets `capacity_factor` None, and an export refuses a model that drops tokens.
Checkpoints store one tensor per expert (`experts.{j}.*`, what `save_pretrained` writes and
the hub holds); our experts are stacked [E, ...] and filled one slice at a time.
`router_aux_loss_coef` weighs transformers' load-balancing loss E * sum_e (sum_k f_e,k) P_e,
one value with f and P pooled over all layers' tokens, k at uniform routing; ours is summed
over the Y layers, each 1 at uniform (Switch, f over the k * L assignments). So
`moe_lb_weight` = coef * k / Y: the same loss, and to first order the same router gradients.
(transformers adds it only when `output_router_logits` is set; we always train with it.)

The module registers itself with `hf_weights.register_family` (the registries of hf_config and
hf_weights) because it builds on them; llm/interop/__init__.py imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from llm.config import ModelConfig
from llm.config.model import MOE_FIELDS
from llm.interop.hf_config import (
    UnsupportedConfig,
    _Fields,
    _init_std,
    _llama_family_config,
    _llama_fields,
    hf_model_type,
)
from llm.interop.hf_weights import Rule, _transposed, llama_rules, register_family

MOE_TYPES = ("mixtral", "qwen2_moe")
# the dense Llama-family reading each MoE type shares its attention with
DENSE_BASE = {"mixtral": "mistral", "qwen2_moe": "qwen2"}
ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
# the MLP of our block, as three (ours, Mixtral, Qwen2-MoE) names of the SwiGLU matrices
EXPERT_NAMES = (("gate", "w1", "gate_proj"), ("up", "w3", "up_proj"), ("down", "w2", "down_proj"))


def moe_config_from_hf(hf: Mapping[str, Any], source: str, param_dtype: str) -> ModelConfig:
    """Our ModelConfig of a Mixtral / Qwen2-MoE config.json; UnsupportedConfig names a
    field we cannot compute (read strictly, as model_config_from_hf reads the dense ones)."""
    model_type = hf["model_type"]
    f = _Fields(hf, source)
    kwargs = _llama_fields(f, DENSE_BASE[model_type])
    kwargs |= _mixtral_moe(f) if model_type == "mixtral" else _qwen2_moe(f)
    coef = float(f.take("router_aux_loss_coef", 0.001))
    kwargs["moe_lb_weight"] = coef * kwargs["experts_per_token"] / kwargs["n_layers"]
    if leftover := f.leftovers():
        raise UnsupportedConfig(
            f"{source}: config field(s) {leftover} of model_type {model_type!r} are not "
            "supported; if one does not change the computation, add it to IGNORED in "
            "llm/interop/hf_config.py"
        )
    return ModelConfig(**kwargs, dtype=param_dtype, param_dtype=param_dtype, init_std=_init_std(f))


def _routing(f: _Fields, n_experts_key: str) -> dict[str, Any]:
    """Fields both types share: experts, k and the dropless softmax router."""
    k = f.take("num_experts_per_tok")
    f.take("output_router_logits", False)  # whether forward returns router logits: no math
    return dict(
        n_experts=f.take(n_experts_key),
        experts_per_token=k,
        moe_gate="softmax",
        capacity_factor=None,
    )


def _mixtral_moe(f: _Fields) -> dict[str, Any]:
    jitter = f.take("router_jitter_noise", 0.0)
    if jitter:
        raise UnsupportedConfig(
            f"{f.source}: router_jitter_noise={jitter!r} (multiplicative noise on the router "
            "input in training) is not implemented; only 0.0"
        )
    return _routing(f, "num_local_experts") | dict(moe_renormalize=True, moe_d_ff=None)


def _qwen2_moe(f: _Fields) -> dict[str, Any]:
    step, dense_layers = f.take("decoder_sparse_step", 1), f.take("mlp_only_layers", None)
    if step != 1 or dense_layers:
        raise UnsupportedConfig(
            f"{f.source}: decoder_sparse_step={step!r}, mlp_only_layers={dense_layers!r}: "
            "only the uniform layout (every layer MoE: step 1, no mlp_only_layers) is supported"
        )
    shared = f.take("shared_expert_intermediate_size")
    if shared <= 0:
        raise UnsupportedConfig(
            f"{f.source}: shared_expert_intermediate_size={shared!r} must be positive"
        )
    return _routing(f, "num_experts") | dict(
        qkv_bias=bool(f.take("qkv_bias", True)),  # transformers 5's key; older files: always
        moe_renormalize=bool(f.take("norm_topk_prob", False)),
        moe_d_ff=f.take("moe_intermediate_size"),
        moe_shared_d_ff=shared,
        moe_shared_gate=True,
    )


def dense_twin(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with a dense MLP: the attention, norms and RoPE the Llama-family export checks."""
    defaults = ModelConfig()
    moe_off = {k: getattr(defaults, k) for k in MOE_FIELDS}
    return dataclasses.replace(cfg, n_experts=0, **moe_off)


def moe_model_type(cfg: ModelConfig) -> str | None:
    """The model_type (mixtral, qwen2_moe) transformers computes an MoE `cfg` with exactly;
    None for a dense one; UnsupportedConfig listing what no MoE architecture there has."""
    if cfg.n_experts == 0:
        return None
    base = hf_model_type(dense_twin(cfg))  # refuses what no Llama-family attention computes
    model_type = "qwen2_moe" if cfg.moe_shared_d_ff else "mixtral"
    problems = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in _needs(cfg, model_type)]
    if cfg.capacity_factor is not None:
        problems.append(f"capacity_factor={cfg.capacity_factor} (transformers is dropless: null)")
    if base not in ("llama", "mistral", "qwen2"):
        problems.append(f"attention of {base!r} (needs Llama, Mistral or Qwen2's)")
    if problems:
        raise UnsupportedConfig(f"no Hugging Face MoE architecture matches: {problems}")
    return model_type


def _needs(cfg: ModelConfig, model_type: str) -> list[tuple[str, Any]]:
    """(field, the value `model_type` computes) for the fields cfg sets otherwise."""
    if model_type == "mixtral":
        need = dict(moe_gate="softmax", moe_renormalize=True, qkv_bias=False, out_bias=False)
        if cfg.moe_d_ff not in (None, cfg.d_ff):
            need["moe_d_ff"] = None
    else:
        need = dict(moe_gate="softmax", moe_shared_gate=True, out_bias=False)
    return [(k, v) for k, v in need.items() if getattr(cfg, k) != v]


def moe_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json keys (transformers 5 layout) of an MoE config `moe_model_type` accepts."""
    model_type = moe_model_type(cfg)
    assert model_type is not None, "a dense config has no MoE export"
    out = _llama_family_config(dense_twin(cfg), DENSE_BASE[model_type])
    k = cfg.experts_per_token
    out |= dict(
        architectures=[ARCHITECTURES[model_type]],
        num_experts_per_tok=k,
        router_aux_loss_coef=cfg.moe_lb_weight * cfg.n_layers / k,
        output_router_logits=False,
    )
    if model_type == "mixtral":
        return out | dict(num_local_experts=cfg.n_experts, router_jitter_noise=0.0)
    return out | dict(
        num_experts=cfg.n_experts,
        qkv_bias=cfg.qkv_bias,
        moe_intermediate_size=cfg.moe_d_ff or cfg.d_ff,
        shared_expert_intermediate_size=cfg.moe_shared_d_ff,
        norm_topk_prob=cfg.moe_renormalize,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def moe_rules(cfg: ModelConfig) -> list[Rule]:
    """The Llama rules for attention, norms and embeddings; the MLP's replaced by the router
    and one rule per expert matrix ("{j}" = expert index into our stacked [E, ...])."""
    mixtral = moe_model_type(cfg) == "mixtral"
    rules = [r for r in llama_rules(cfg) if r.ours[0][:2] != ("blocks", "mlp")]
    prefix = "model.layers.{i}." + ("block_sparse_moe." if mixtral else "mlp.")
    rules.append(_transposed(("blocks", "mlp", "router", "w"), prefix + "gate.weight"))
    for ours, w_mixtral, w_qwen in EXPERT_NAMES:
        hf = f"experts.{{j}}.{w_mixtral}.weight" if mixtral else f"experts.{{j}}.{w_qwen}.weight"
        rules.append(_transposed(("blocks", "mlp", ours, "w"), prefix + hf))
    if mixtral:
        return rules
    for ours, _, w_qwen in EXPERT_NAMES:
        path = ("blocks", "mlp", "shared", ours, "w")
        rules.append(_transposed(path, prefix + f"shared_expert.{w_qwen}.weight"))
    gate = ("blocks", "mlp", "shared_gate", "w")
    return [*rules, _transposed(gate, prefix + "shared_expert_gate.weight")]


register_family(
    MOE_TYPES, read=moe_config_from_hf, type_of=moe_model_type, write=moe_hf_config, rules=moe_rules
)

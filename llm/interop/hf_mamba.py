"""Hugging Face Mamba (`model_type: mamba`, `MambaForCausalLM`) <-> our `arch: mamba`.

`transformers`' Mamba is the paper's model (Gu & Dao, 2023, arXiv:2312.00752) with the names
of the reference code (`backbone.layers.{i}.mixer.*`): exactly our pure-SSM model with
`norm: rmsnorm` (`layer_norm_epsilon`), no in/out projection biases (`use_bias: false`), a
convolution bias (`use_conv_bias: true`), SiLU, and the residual stream in float32
(`residual_in_fp32: true`, what our model always does). Other values of those keys are
refused by name. The `time_step_*` keys, `rescale_prenorm_residual` and `initializer_range`
only initialise a model; `use_mambapy` / `use_associative_scan` pick an implementation of the
same scan: all ignored. Hybrids (ssm_attention_every > 0) have no Hugging Face counterpart.

Weight layout: `nn.Linear` weights are (out, in), so every projection is transposed;
`in_proj` [2E, D] holds x then z and becomes our [D, 2, E]; the depthwise `conv1d.weight`
[E, 1, K] becomes [K, E]; `dt_proj.bias` is our `dt_bias`. A_log and D are stored as they are.

This module registers itself in the family registries of hf_config.py / hf_weights.py, so
`llm convert from-hf` and the export go through `model_config_from_hf` / `rules_for`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llm.config import ModelConfig
from llm.interop.hf_config import (
    IGNORED,
    UnsupportedConfig,
    _Fields,
)
from llm.interop.hf_weights import Rule, _ident, _one, _transposed, register_family

# keys that only initialise the model or choose an implementation of the same computation
MAMBA_IGNORED = frozenset(
    """time_step_scale time_step_min time_step_max time_step_init_scheme time_step_floor
    rescale_prenorm_residual use_mambapy use_associative_scan""".split()
)


def mamba_model_config(
    hf: Mapping[str, Any], *, source: str = "config.json", param_dtype: str = "float32"
) -> ModelConfig:
    """Our config for a Mamba config.json; UnsupportedConfig names what we lack."""
    f = _Fields(hf, source)
    for key, value in (("hidden_act", "silu"), ("use_bias", False), ("use_conv_bias", True),
                       ("residual_in_fp32", True)):  # fmt: skip
        f.require(key, value)
    d_model, expand = f.take("hidden_size"), f.take("expand", 2)
    inner = f.take("intermediate_size", expand * d_model)
    if inner != expand * d_model:
        raise UnsupportedConfig(f"{source}: intermediate_size {inner} != expand * hidden_size")
    rank = f.take("time_step_rank", "auto")
    kwargs = dict(
        vocab_size=f.take("vocab_size"),
        d_model=d_model,
        n_layers=f.take("num_hidden_layers"),
        ssm_state=f.take("state_size", 16),
        ssm_conv=f.take("conv_kernel", 4),
        ssm_expand=expand,
        ssm_dt_rank=math.ceil(d_model / 16) if rank == "auto" else int(rank),
        norm_eps=float(f.take("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(f.take("tie_word_embeddings", True)),
    )
    leftover = [k for k in f.leftovers() if k not in MAMBA_IGNORED and k not in IGNORED]
    if leftover:
        raise UnsupportedConfig(
            f"{source}: config field(s) {leftover} of model_type 'mamba' are not supported"
        )
    return ModelConfig(
        **kwargs, arch="mamba", norm="rmsnorm", pos_encoding="none", dtype=param_dtype,
        param_dtype=param_dtype, init_std=float(hf.get("initializer_range", 0.02)),
    )  # fmt: skip


def mamba_rules(cfg: ModelConfig) -> list[Rule]:
    """MambaForCausalLM tensor names -> our param paths (`mamba_layers` stacked [Y, ...])."""
    E = cfg.ssm_expand * cfg.d_model
    layer, mixer = "backbone.layers.{i}.", ("mamba_layers", "mixer")
    m = layer + "mixer."
    rules = [
        _ident(("token_embed",), "backbone.embeddings.weight"),
        _ident(("final_norm", "scale"), "backbone.norm_f.weight"),
        _ident(("mamba_layers", "norm", "scale"), layer + "norm.weight"),
        _ident((*mixer, "A_log"), m + "A_log"),
        _ident((*mixer, "D"), m + "D"),
        _one((*mixer, "conv_w"), m + "conv1d.weight", lambda w: w[:, 0].T, lambda x: x.T[:, None]),
        _ident((*mixer, "conv_bias"), m + "conv1d.bias"),
        _one(
            (*mixer, "in_proj", "w"),
            m + "in_proj.weight",
            lambda w: w.reshape(2, E, -1).transpose(2, 0, 1),
            lambda x: x.transpose(1, 2, 0).reshape(2 * E, -1),
        ),
        _transposed((*mixer, "x_proj", "w"), m + "x_proj.weight"),
        _transposed((*mixer, "dt_proj", "w"), m + "dt_proj.weight"),
        _ident((*mixer, "dt_bias"), m + "dt_proj.bias"),
        _transposed((*mixer, "out_proj", "w"), m + "out_proj.weight"),
    ]
    if not cfg.tie_embeddings:
        rules.append(_transposed(("lm_head",), "lm_head.weight"))
    return rules


def mamba_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json keys of a MambaForCausalLM computing `cfg` (export; the caller adds the
    common keys)."""
    return dict(
        architectures=["MambaForCausalLM"], vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers, state_size=cfg.ssm_state, conv_kernel=cfg.ssm_conv,
        expand=cfg.ssm_expand, intermediate_size=cfg.ssm_expand * cfg.d_model,
        time_step_rank=cfg.ssm_dt_rank or math.ceil(cfg.d_model / 16),
        layer_norm_epsilon=cfg.norm_eps, hidden_act="silu", use_bias=False, use_conv_bias=True,
        residual_in_fp32=True,
    )  # fmt: skip


def _mamba_type(cfg: ModelConfig) -> str | None:
    if cfg.arch != "mamba":
        return None
    if cfg.ssm_attention_every or cfg.norm != "rmsnorm":
        raise UnsupportedConfig(
            "Hugging Face Mamba is pure SSM with RMSNorm; got ssm_attention_every="
            f"{cfg.ssm_attention_every}, norm={cfg.norm!r}: keep the checkpoint in our format"
        )
    return "mamba"


register_family(
    ("mamba",),
    read=mamba_model_config,
    type_of=_mamba_type,
    write=mamba_hf_config,
    rules=mamba_rules,
)

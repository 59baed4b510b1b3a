"""GGUF import on a tiny file written here with `gguf.GGUFWriter` from a random transformers Llama.

The file is written the way llama.cpp's converter writes one: Q and K rows permuted per head
(the formula below is the converter's), some weights quantized to Q8_0, the byte-level BPE
vocabulary and merges in the metadata. Importing it must give transformers' logits on the
dequantized weights, and the rebuilt tokenizer must encode like the original one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_models import hf_logits, max_rel_err, randomize

from llm.checkpoint import load_model
from llm.interop import UnsupportedConfig, import_gguf
from llm.interop.chat_template import ChatTemplate
from llm.interop.gguf import model_config_from_gguf, unpermute_rows
from llm.model import forward

IDS = np.random.default_rng(1).integers(0, 290, size=(2, 10)).astype(np.int32)
TEXTS = ["The quick brown fox, 2024!", "  What is\nthe capital  of France?", "x1y22z333"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's Q/K reordering (rotate-half -> interleaved pairs)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def source_tokenizer():
    """A byte-level BPE whose pre-tokenizer splits digits (llama.cpp's "smollm" pre-type)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t * 3 for t in TEXTS] * 20, trainer)
    return tok


def write_gguf(model, tok, path) -> dict:
    """Writes the model as llama.cpp would; returns the HF state dict it dequantizes to."""
    import gguf
    import torch

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    data = json.loads(tok.to_str())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i < 3 else 1 for i in range(len(vocab))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(c.num_hidden_layers):
        names |= {f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in layer.items()}
    state = {}
    for hf_name, t in model.state_dict().items():
        x = t.numpy().astype(np.float32)
        if "q_proj" in hf_name:
            x = llama_cpp_permute(x, c.num_attention_heads)
        elif "k_proj" in hf_name:
            x = llama_cpp_permute(x, c.num_key_value_heads)
        if "mlp" in hf_name:  # quantized: the reference must use what the file holds
            q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(names[hf_name], q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            x = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(names[hf_name], x)
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(x))
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
        for i in range(c.num_hidden_layers):
            key = f"model.layers.{i}.{name}"
            state[key] = model.state_dict()[key]  # the reference keeps HF's own layout
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return state


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    import torch
    import transformers as T

    torch.manual_seed(0)
    tok = source_tokenizer()
    config = T.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = T.LlamaForCausalLM(config).eval()
    randomize(model, 3)
    tmp = tmp_path_factory.mktemp("gguf")
    state = write_gguf(model, tok, tmp / "tiny.gguf")
    model.load_state_dict(state)
    import_gguf(tmp / "tiny.gguf", tmp / "ours")
    m = load_model(tmp / "ours")
    return model, tok, tmp / "ours", (m.config, m.params, m.tokenizer)


def test_gguf_logits_match_transformers(gguf_model):
    model, _, _, (cfg, params, _) = gguf_model
    err = max_rel_err(forward(cfg.model, params, IDS).logits_BLV, hf_logits(model, IDS))
    assert err < 1e-5, f"max relative logit error {err:.2e}"


def test_gguf_tokenizer_encodes_like_the_source(gguf_model):
    _, source, _, (_, _, tok) = gguf_model
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == source.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text
    assert tok.encode("1234") == [source.token_to_id(d) for d in "1234"]  # digits split


def test_gguf_chat_template_and_specials(gguf_model):
    _, source, out, (_, _, tok) = gguf_model
    chat = ChatTemplate.from_dir(out)
    assert chat.source == CHATML
    assert chat.stop_ids() == [2]
    ids = chat.encode(
        tok, [{"role": "user", "content": "hi <|im_end|>"}], add_generation_prompt=False
    )
    assert ids[0] == 1 and ids[-2:] == [2, source.token_to_id("Ċ")]
    assert ids.count(2) == 1  # the typed marker stayed text


def test_unpermute_inverts_llama_cpp():
    w = np.random.default_rng(0).normal(size=(4 * 8, 5))
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(w, 4), 4), w)
    assert not np.array_equal(llama_cpp_permute(w, 4), w)


def test_unsupported_gguf_metadata_is_named():
    meta = {"general.architecture": "llama", "llama.expert_count": 8}
    with pytest.raises(UnsupportedConfig, match=r"llama\.expert_count"):
        model_config_from_gguf(meta, set(), "x.gguf")
    with pytest.raises(UnsupportedConfig, match="'falcon'"):
        model_config_from_gguf({"general.architecture": "falcon"}, set(), "x.gguf")

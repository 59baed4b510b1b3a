"""Tiny random Hugging Face models, built with `transformers` inside the tests (nothing committed).

Every parameter is redrawn from a normal distribution (norm weights around 1), because
transformers initialises biases to zero and norms to one: a swapped bias or norm would
otherwise go unnoticed. The scale (0.15) gives logits well separated enough that greedy
decoding does not hinge on float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 300
N_LAYERS = 2
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def hf_config(arch: str):
    import transformers as T

    common = dict(vocab_size=VOCAB, tie_word_embeddings=False)
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        **common,
    )
    if arch == "llama":  # Llama 3.1 RoPE scaling; orig length 32 puts bands in all 3 regimes
        rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0)
        rope |= dict(high_freq_factor=4.0, original_max_position_embeddings=32)
        return T.LlamaConfig(**llama_like, rope_parameters=rope, attention_bias=True)
    if arch == "mistral":  # window 6 < the sequences below, so the window matters
        return T.MistralConfig(**llama_like, sliding_window=6)
    if arch == "qwen2":
        return T.Qwen2Config(**llama_like)
    if arch == "qwen3":  # head_dim 16 with 4 heads != d_model 32: decoupled
        return T.Qwen3Config(**llama_like, head_dim=16)
    return T.GPT2Config(
        n_embd=32,
        n_layer=N_LAYERS,
        n_head=4,
        n_positions=64,
        vocab_size=VOCAB,
        bos_token_id=None,
        eos_token_id=None,
    )


def randomize(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.15
            is_norm = "norm" in name or ".ln_" in name
            p.copy_(1.0 + noise if is_norm and name.endswith("weight") else noise)


def make_hf_model(arch: str, seed: int = 0):
    import torch
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32)
    randomize(model, seed)
    return model.eval()


def tiny_tokenizer_json() -> str:
    """A byte-level BPE with VOCAB entries trained on a few sentences (ids < VOCAB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?"]
    tok.train_from_iterator(text * 20, trainer)
    assert tok.get_vocab_size() <= VOCAB
    return tok.to_str()


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_hf(model, path: Path) -> Path:
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text(tiny_tokenizer_json())
    config = dict(chat_template=CHATML, eos_token="<|im_end|>", bos_token="<|im_start|>")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def max_rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|: the error relative to the logits' scale."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))

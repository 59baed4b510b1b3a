"""The simple sampler equals a plain greedy loop over growing sequences, window sliding included."""

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import tiny_config

from llm.model import forward, init_params
from llm.train.sample import sample


class IdTokenizer:
    """Decodes to the ids themselves, so texts compare token for token."""

    vocab_size, pad_id, bos_id, eos_id = 259, 256, 257, 258

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_greedy_sample_matches_reference_loop():
    cfg = tiny_config("unused", "model.max_seq_len=8", "train.seq_len=8").model
    params = init_params(cfg, jax.random.key(3))
    tok = IdTokenizer()
    got = sample(cfg, params, tok, "abcdef", max_new_tokens=5, temperature=0.0)

    logits = jax.jit(lambda p, w: forward(cfg, p, w).logits_BLV)
    ids = [tok.bos_id, *tok.encode("abcdef")]
    for _ in range(5):  # reference: plain forward on the last max_seq_len ids, no padding
        window = jnp.asarray([ids[-cfg.max_seq_len :]], jnp.int32)
        token = int(np.argmax(logits(params, window)[0, -1]))
        if token == tok.eos_id:
            break
        ids.append(token)
    assert len(ids) > cfg.max_seq_len  # the window did slide
    assert got == tok.decode(ids[1:])


def test_prefix_lm_sample_reads_the_prompt_as_prefix():
    """model.prefix_lm: BOS + prompt is the bidirectional prefix (the reference passes it
    explicitly); after the window slides, only the prompt tokens still inside it are."""
    cfg = tiny_config("unused", "model.max_seq_len=8", "train.seq_len=8",
                      "model.prefix_lm=true").model  # fmt: skip
    params = init_params(cfg, jax.random.key(3))
    tok = IdTokenizer()
    got = sample(cfg, params, tok, "abcdef", max_new_tokens=5, temperature=0.0)

    logits = jax.jit(lambda p, w, f: forward(cfg, p, w, prefix_BL=f).logits_BLV)
    ids = [tok.bos_id, *tok.encode("abcdef")]
    n_prompt, L = len(ids), cfg.max_seq_len
    for _ in range(5):
        start = max(0, len(ids) - L)
        window = jnp.asarray([ids[start:]], jnp.int32)
        prefix = jnp.asarray([[start + i < n_prompt for i in range(window.shape[1])]])
        token = int(np.argmax(logits(params, window, prefix)[0, -1]))
        if token == tok.eos_id:
            break
        ids.append(token)
    assert len(ids) > L  # the window did slide
    assert got == tok.decode(ids[1:])

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

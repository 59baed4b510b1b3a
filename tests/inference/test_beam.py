"""Beam search: exhaustive on a toy model when nothing is pruned; consistent with the model."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from llm.inference.beam import beam_search, search
from llm.model import forward
from tests.inference.conftest import TINY

V, EOS, T = 5, 4, 3
RNG = np.random.default_rng(0)
TRANSITIONS_VV = np.log(RNG.dirichlet(np.ones(V), size=V))  # toy bigram model, row = last token
FIRST_V = np.log(RNG.dirichlet(np.ones(V)))


def exhaustive(length_penalty):
    """Every sequence of up to T tokens (EOS only last), scored like beam search does."""
    best = []
    for n in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < T and seq[-1] != EOS):
                continue
            lp = FIRST_V[seq[0]] + sum(TRANSITIONS_VV[a, b] for a, b in itertools.pairwise(seq))
            tokens = seq[:-1] if seq[-1] == EOS else seq
            best.append((lp / n**length_penalty, tokens))
    return max(best)


def toy_step(parents_W, tokens_W):
    """The bigram model's next-token log-probabilities (it needs no per-beam state)."""
    return TRANSITIONS_VV[tokens_W]


def test_unpruned_beam_search_is_exhaustive():
    for length_penalty in (0.0, 1.0, -0.5, 2.0):
        hyps = search(FIRST_V, toy_step, num_beams=V**T, max_new_tokens=T, eos_id=EOS,
                      length_penalty=length_penalty)  # fmt: skip
        score, tokens = exhaustive(length_penalty)
        assert hyps[0].tokens == tokens and np.isclose(hyps[0].score, score), length_penalty


def test_one_beam_is_greedy():
    hyps = search(FIRST_V, toy_step, num_beams=1, max_new_tokens=T, eos_id=None)
    seq = [int(np.argmax(FIRST_V))]
    for _ in range(T - 1):
        seq.append(int(np.argmax(TRANSITIONS_VV[seq[-1]])))
    assert list(hyps[0].tokens) == seq


def test_model_beams_score_their_own_tokens(engine, tiny_params):
    """Each returned beam's log-probability equals a full forward over prompt + beam."""
    prompt = [10, 20, 30]
    hyps = beam_search(engine, prompt, num_beams=3, max_new_tokens=6, length_penalty=0.0)
    assert len(hyps) == 3 and hyps[0].score >= hyps[1].score >= hyps[2].score
    fwd = jax.jit(lambda p, t: jax.nn.log_softmax(forward(TINY, p, t).logits_BLV[0]))
    for h in hyps:
        ids = prompt + list(h.tokens)
        window = np.zeros((1, engine.max_len), np.int32)
        window[0, : len(ids)] = ids
        lp_LV = np.asarray(fwd(tiny_params, jnp.asarray(window)))
        want = sum(lp_LV[len(prompt) - 1 + i, tok] for i, tok in enumerate(h.tokens))
        np.testing.assert_allclose(h.logprob, want, rtol=1e-4, atol=1e-4)
    greedy = engine.generate([prompt])[0].token_ids[:6]
    one = beam_search(engine, prompt, num_beams=1, max_new_tokens=6, length_penalty=0.0)
    assert list(one[0].tokens) == greedy

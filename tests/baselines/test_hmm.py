"""Discrete HMM: forward and Viterbi against brute-force enumeration, Baum-Welch's monotone
likelihood and recovery of a planted model, and the HMM LM's bits per byte."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

from llm.baselines.heldout import heldout_metrics
from llm.baselines.hmm import (
    HMM,
    HMMLanguageModel,
    baum_welch,
    forward_logspace,
    forward_scaled,
    log_likelihood,
    random_hmm,
    sample,
    viterbi,
)
from llm.baselines.ngram_counts import Documents
from llm.data.shards import TokenShard
from llm.tokenizers import ByteTokenizer


def path_log_probs(hmm: HMM, obs: np.ndarray) -> dict[tuple, float]:
    """log p(x, z) of every state path z: K^T terms."""
    out = {}
    for z in itertools.product(range(hmm.n_states), repeat=len(obs)):
        lp = np.log(hmm.start_K[z[0]]) + np.log(hmm.emit_KV[z[0], obs[0]])
        for t in range(1, len(obs)):
            lp += np.log(hmm.trans_KK[z[t - 1], z[t]]) + np.log(hmm.emit_KV[z[t], obs[t]])
        out[z] = lp
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_and_viterbi_equal_brute_force(seed):
    hmm = random_hmm(3, 4, seed=seed, concentration=0.7)
    _, obs = sample(hmm, 7, seed=seed + 10)
    paths = path_log_probs(hmm, obs)
    assert log_likelihood(hmm, obs) == pytest.approx(logsumexp(list(paths.values())), rel=1e-12)
    best = max(paths, key=paths.get)
    path, score = viterbi(hmm, obs)
    assert tuple(path) == best and score == pytest.approx(paths[best], rel=1e-12)
    _, c_TB = forward_scaled(hmm, obs[None])  # the batched scaled forward agrees
    assert np.log(c_TB).sum() == pytest.approx(log_likelihood(hmm, obs), rel=1e-12)
    prefix = [log_likelihood(hmm, obs[: t + 1]) for t in range(len(obs))]
    np.testing.assert_allclose(np.log(c_TB[:, 0]), np.diff(prefix, prepend=0.0), rtol=1e-10)


def test_forward_logspace_survives_long_sequences():
    hmm = random_hmm(4, 6, seed=3)
    _, obs = sample(hmm, 1500, seed=4)
    alpha = forward_logspace(hmm, obs)
    ll = log_likelihood(hmm, obs)
    assert np.isfinite(alpha[-1]).all() and np.isfinite(ll)
    assert np.exp(ll) == 0.0  # as a plain probability the likelihood underflows float64


PLANTED = HMM(
    np.array([0.5, 0.5]),
    np.array([[0.9, 0.1], [0.2, 0.8]]),
    np.array([[0.8, 0.15, 0.05], [0.1, 0.2, 0.7]]),
)


def test_baum_welch_never_decreases_likelihood():
    _, obs = sample(random_hmm(3, 5, seed=5), 4000, seed=6)
    _, history = baum_welch(random_hmm(3, 5, seed=7), obs.reshape(20, 200), iters=25)
    assert np.all(np.diff(history) >= -1e-9 * abs(history[0]))
    assert history[-1] > history[0] + 10


def test_baum_welch_recovers_a_planted_model():
    """40,000 observations. Were the states seen, each transition row would be estimated
    from ~13,000-27,000 visits: std sqrt(p (1 - p) / n) <= 0.003. Hidden states lose
    information (the emissions overlap), which inflates the error a few times (~0.01); 0.04
    is about four such deviations, and a wrong fixed point (swapped or merged states) misses
    by far more than that."""
    _, obs = sample(PLANTED, 40_000, seed=0)
    fitted, _ = baum_welch(random_hmm(2, 3, seed=5), obs.reshape(80, 500), iters=30)
    order = np.argsort(-fitted.emit_KV[:, 0])  # states are identified up to relabelling
    np.testing.assert_allclose(fitted.trans_KK[order][:, order], PLANTED.trans_KK, atol=0.04)
    np.testing.assert_allclose(fitted.emit_KV[order], PLANTED.emit_KV, atol=0.04)


def test_hmm_language_model_reports_bits_per_byte():
    """Bytes of a tiny text: the HMM LM beats the uniform 8 bits per byte, and its log-probs
    are the chain rule of the forward algorithm (0 for each given BOS)."""
    tok = ByteTokenizer()
    text = "to be or not to be that is the question whether tis nobler in the mind " * 6
    docs = [[tok.bos_id, *tok.encode(text[i:]), tok.eos_id] for i in range(0, 60, 7)]
    train = Documents.from_list(docs[:-2])
    val = Documents.from_list(docs[-2:])
    lm, history = HMMLanguageModel.fit(train, tok.vocab_size, n_states=6, iters=8, rows=4,
                                       max_tokens=None, progress=False)  # fmt: skip
    assert history[-1] > history[0]
    lp = lm.logprobs(val)
    first = val.starts[:-1]
    assert np.all(lp[first] == 0.0)
    doc = val.tokens[val.starts[0] : val.starts[1]]
    assert lp[1 : len(doc)].sum() == pytest.approx(
        log_likelihood(lm.hmm, doc) - log_likelihood(lm.hmm, doc[:1]), rel=1e-9
    )
    shard = TokenShard(val.tokens, val.starts, tok.vocab_size)
    metrics = heldout_metrics(lp, shard, tok, seq_len=32, batch_size=2)
    assert 0 < metrics["bpb"] < 8 and metrics["tokens"] == len(val) - 2

"""word2vec: the negative-sampling losses and gradients equal the formula derived by hand,
negatives follow the noise distribution, and training learns the topics of a synthetic corpus.

Hand gradients of l = -log s(u.v) - sum_k log s(-u_k.v), s the logistic function:
dl/dv = (s(u.v) - 1) u + sum_k s(u_k.v) u_k;  dl/du = (s(u.v) - 1) v;  dl/du_k = s(u_k.v) v.
In CBOW v is the mean of the context's input vectors, so each context word gets dl/dv / |C|.
Rows that occur several times in a batch (or as both target and negative) add their parts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.embeddings.word2vec import (
    Word2VecConfig,
    cbow_loss,
    sample_negatives,
    sgns_loss,
    train_word2vec,
)

V, D, B, K, C = 11, 6, 7, 4, 4


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def random_case(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(V, D)), "c": rng.normal(size=(V, D))}
    center = rng.integers(V, size=B)
    context = rng.integers(V, size=B)
    context[0] = center[0]  # a word predicting itself
    negatives = rng.integers(V, size=(B, K))
    negatives[1, :2] = context[1]  # a negative equal to the true word, twice
    return params, center, context, negatives


def hand_loss_and_grads(w, c, v_B, targets, negatives):
    """Per-example loss and gradients w.r.t. v and the output table, by the formula."""
    loss, dv, dc = np.zeros(len(v_B)), np.zeros_like(v_B), np.zeros_like(c)
    for b, v in enumerate(v_B):
        u, un = c[targets[b]], c[negatives[b]]
        loss[b] = -np.log(sigmoid(u @ v)) - np.log(sigmoid(-un @ v)).sum()
        dv[b] = (sigmoid(u @ v) - 1) * u + (sigmoid(un @ v)[:, None] * un).sum(0)
        dc[targets[b]] += (sigmoid(u @ v) - 1) * v
        for k in negatives[b]:
            dc[k] += sigmoid(c[k] @ v) * v
    return loss, dv, dc


def test_sgns_loss_and_gradient_equal_the_formula():
    params, center, context, negatives = random_case()
    w, c = params["w"], params["c"]
    loss, dv, dc = hand_loss_and_grads(w, c, w[center], context, negatives)
    dw = np.zeros_like(w)
    np.add.at(dw, center, dv)
    with jax.enable_x64(True):  # float64, so the formula is checked to rounding
        jparams = jax.tree.map(jnp.asarray, params)
        ours = sgns_loss(jparams, center, context, negatives)
        grads = jax.grad(lambda p: sgns_loss(p, center, context, negatives).sum())(jparams)
    np.testing.assert_allclose(ours, loss, rtol=1e-12)
    np.testing.assert_allclose(grads["w"], dw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["c"], dc, rtol=1e-10, atol=1e-12)


def test_cbow_loss_and_gradient_equal_the_formula():
    params, center, _, negatives = random_case(1)
    rng = np.random.default_rng(2)
    context = rng.integers(V, size=(B, C))
    mask = rng.random((B, C)) < 0.7
    mask[:, 0] = True  # every example has a context word
    w, c = params["w"], params["c"]
    h = np.stack([w[context[b][mask[b]]].mean(0) for b in range(B)])
    loss, dh, dc = hand_loss_and_grads(w, c, h, center, negatives)
    dw = np.zeros_like(w)
    for b in range(B):
        for j in context[b][mask[b]]:
            dw[j] += dh[b] / mask[b].sum()
    with jax.enable_x64(True):
        jparams = jax.tree.map(jnp.asarray, params)
        ours = cbow_loss(jparams, context, mask, center, negatives)
        grads = jax.grad(lambda p: cbow_loss(p, context, mask, center, negatives).sum())(jparams)
    np.testing.assert_allclose(ours, loss, rtol=1e-12)
    np.testing.assert_allclose(grads["w"], dw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["c"], dc, rtol=1e-10, atol=1e-12)


def test_negatives_follow_the_noise_distribution():
    probs = np.array([0.5, 0.0, 0.3, 0.15, 0.05])
    cdf = jnp.asarray(np.cumsum(probs), jnp.float32)
    draws = np.asarray(sample_negatives(jax.random.key(0), cdf, (200_000,)))
    freq = np.bincount(draws, minlength=len(probs)) / len(draws)
    # binomial standard error at 2e5 draws is <= 0.0012; 0.005 is four of them
    np.testing.assert_allclose(freq, probs, atol=0.005)
    assert freq[1] == 0.0  # a zero-probability word is never drawn


def ring_corpus(n_sent=2000, topics=8, per=6, length=10, seed=0):
    """Sentences of one topic each, topics on a ring: a word is from the sentence's topic
    (p 0.6), a neighbouring topic (p 0.15 each side) or a function word (p 0.1), so the
    similarity of two words falls with their topics' distance on the ring."""
    rng = np.random.default_rng(seed)
    words = [[f"t{t}w{i}" for i in range(per)] for t in range(topics)]
    out = []
    for _ in range(n_sent):
        t, sentence = rng.integers(topics), []
        for _ in range(length):
            r = rng.random()
            if r < 0.1:
                sentence.append(f"f{rng.integers(6)}")
                continue
            topic = t if r < 0.7 else (t + (1 if r < 0.85 else -1)) % topics
            sentence.append(words[topic][rng.integers(per)])
        out.append(sentence)
    return out


@pytest.mark.parametrize("method,lr", [("sgns", 1e-2), ("cbow", 3e-2)])
def test_training_learns_the_ring_of_topics(method, lr):
    cfg = Word2VecConfig(method=method, dim=16, epochs=3, batch=128, lr=lr, min_count=1)
    wv = train_word2vec(ring_corpus(2000), cfg, progress=False)
    unit, index = wv.unit(), wv.index
    same = [unit[index[f"t{t}w0"]] @ unit[index[f"t{t}w1"]] for t in range(8)]
    far = [unit[index[f"t{t}w0"]] @ unit[index[f"t{(t + 4) % 8}w1"]] for t in range(8)]
    assert np.mean(same) > np.mean(far) + 0.5, (np.mean(same), np.mean(far))
    # with c = 0 at init every sigma is 1/2: the initial loss is exactly (1 + K) ln 2
    assert wv.meta["final_loss"] < np.log(2) * (1 + cfg.negatives)
    assert all(d < cfg.batch * 16 for d in wv.meta["dropped_per_epoch"])  # < one chunk


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="method"):
        Word2VecConfig(method="glove")
    with pytest.raises(ValueError, match="window"):
        Word2VecConfig(window=0)

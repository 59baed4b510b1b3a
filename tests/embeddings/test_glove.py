"""GloVe: co-occurrence counts against a brute-force count, the weighting function and the loss
and gradient against the paper's formulas (Pennington et al. 2014, eqs. 8-9), and training.

Hand gradient of J = sum f(X_ij) e_ij^2, e_ij = w_i . w~_j + b_i + b~_j - log X_ij:
dJ/dw_i = 2 f e w~_j, dJ/dw~_j = 2 f e w_i, dJ/db_i = dJ/db~_j = 2 f e (summed over entries).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.embeddings.corpus import Flat
from llm.embeddings.glove import GloVeConfig, cooccurrence, glove_loss, train_glove, weight

sys.path.insert(0, str(Path(__file__).parent))
from test_word2vec import ring_corpus


def test_cooccurrence_equals_brute_force():
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 6, size=n).astype(np.int32) for n in (5, 1, 9)]
    expected = np.zeros((6, 6))
    for s in sentences:
        for i in range(len(s)):
            for j in range(len(s)):
                if i != j and abs(i - j) <= 3:
                    expected[s[i], s[j]] += 1.0 / abs(i - j)
    got = cooccurrence(Flat.of(sentences), 6, window=3).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got, got.T)


def test_weighting_function_is_eq_9():
    x = jnp.array([1.0, 10.0, 100.0, 1000.0])
    # f(x) = (x/100)^0.75 below 100, else 1: 0.01^0.75 = 10^-1.5, 0.1^0.75 = 10^-0.75
    np.testing.assert_allclose(weight(x, 100.0, 0.75), [10**-1.5, 10**-0.75, 1.0, 1.0], rtol=1e-6)


def test_loss_and_gradient_equal_the_formula():
    rng = np.random.default_rng(1)
    V, D, B = 7, 5, 9
    p = {"w": rng.normal(size=(V, D)), "wt": rng.normal(size=(V, D)),
         "b": rng.normal(size=V), "bt": rng.normal(size=V)}  # fmt: skip
    i, j = rng.integers(V, size=B), rng.integers(V, size=B)
    i[1], j[1] = i[0], j[0]  # a repeated entry: its gradient parts add
    x = rng.uniform(0.2, 300.0, size=B)
    f = np.where(x < 50, (x / 50) ** 0.6, 1.0)
    e = (p["w"][i] * p["wt"][j]).sum(1) + p["b"][i] + p["bt"][j] - np.log(x)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    for n in range(B):
        grads["w"][i[n]] += 2 * f[n] * e[n] * p["wt"][j[n]]
        grads["wt"][j[n]] += 2 * f[n] * e[n] * p["w"][i[n]]
        grads["b"][i[n]] += 2 * f[n] * e[n]
        grads["bt"][j[n]] += 2 * f[n] * e[n]
    with jax.enable_x64(True):
        jp = jax.tree.map(jnp.asarray, p)
        ours = glove_loss(jp, i, j, jnp.asarray(x), 50.0, 0.6)
        jgrads = jax.grad(lambda q: glove_loss(q, i, j, jnp.asarray(x), 50.0, 0.6).sum())(jp)
    np.testing.assert_allclose(ours, f * e**2, rtol=1e-12)
    for k in p:
        np.testing.assert_allclose(jgrads[k], grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_training_lowers_the_loss_and_learns_the_topics():
    sentences = ring_corpus(1000)
    one = train_glove(sentences, GloVeConfig(dim=16, epochs=1, batch=256, min_count=1), False)
    wv = train_glove(sentences, GloVeConfig(dim=16, epochs=15, batch=256, min_count=1), False)
    assert wv.meta["final_loss"] < 0.5 * one.meta["final_loss"]
    unit, index = wv.unit(), wv.index
    same = [unit[index[f"t{t}w0"]] @ unit[index[f"t{t}w1"]] for t in range(8)]
    far = [unit[index[f"t{t}w0"]] @ unit[index[f"t{(t + 4) % 8}w1"]] for t in range(8)]
    assert np.mean(same) > np.mean(far) + 0.5, (np.mean(same), np.mean(far))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="window"):
        GloVeConfig(window=0)

"""Our skip-gram and gensim's Word2Vec, trained on the same synthetic corpus, rank word pairs'
cosines alike (Spearman over every pair of 18 probe words: 153 pairs).

The corpus (test_word2vec.ring_corpus) has graded similarity: topics on a ring, so pairs range
from same topic to opposite topics. Threshold 0.85, measured when written (this corpus, dim
32, 5 epochs): gensim vs gensim with another seed 0.966, ours vs gensim 0.961; untrained
vectors score near 0. A broken loss, sampler or window falls far below; a threshold this
far under the measured value leaves room for optimiser differences (Adam minibatches here,
Hogwild SGD there) without passing vectors that learned a different geometry.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.stats
from gensim.models import Word2Vec

from llm.embeddings.word2vec import Word2VecConfig, train_word2vec

sys.path.insert(0, str(Path(__file__).parent))
from test_word2vec import ring_corpus

PROBES = [f"t{t}w{i}" for t in range(8) for i in range(2)] + ["f0", "f1"]
PAIRS = [(a, b) for i, a in enumerate(PROBES) for b in PROBES[i + 1 :]]


def test_skipgram_ranks_pairs_like_gensim():
    sentences = ring_corpus(3000)
    ref = Word2Vec(sentences, vector_size=32, window=5, min_count=1, sg=1, negative=5,
                   sample=1e-3, epochs=5, workers=1, seed=0)  # fmt: skip
    ref_cos = np.array([ref.wv.similarity(a, b) for a, b in PAIRS])
    cfg = Word2VecConfig(dim=32, epochs=5, batch=256, min_count=1)
    wv = train_word2vec(sentences, cfg, progress=False)
    unit, index = wv.unit(), wv.index
    ours = np.array([unit[index[a]] @ unit[index[b]] for a, b in PAIRS])
    rho = scipy.stats.spearmanr(ours, ref_cos).statistic
    assert rho > 0.85, rho
    rng = np.random.default_rng(0)
    untrained = rng.normal(size=(len(PROBES), 32))
    untrained /= np.linalg.norm(untrained, axis=1, keepdims=True)
    pos = {w: k for k, w in enumerate(PROBES)}
    control = [untrained[pos[a]] @ untrained[pos[b]] for a, b in PAIRS]
    assert abs(scipy.stats.spearmanr(control, ref_cos).statistic) < 0.5  # the test can fail

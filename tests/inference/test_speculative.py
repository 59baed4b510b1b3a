"""Speculative decoding: greedy output is the target's, token for token; the acceptance rule
leaves exactly the target's distribution (chi-square)."""

import dataclasses

import jax
import numpy as np
from scipy import stats

from llm.inference import Engine, StopCriteria
from llm.inference.speculative import accept, speculative_generate
from llm.model import abstract_params
from tests.inference.conftest import TINY


def test_greedy_is_token_identical(engine):
    draft_cfg = dataclasses.replace(TINY, n_layers=1, d_ff=32)
    rng = np.random.default_rng(5)  # NumPy weights: no initialiser to compile
    draft_params = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(a.dtype),
                                abstract_params(draft_cfg))  # fmt: skip
    draft = Engine(draft_cfg, draft_params, max_len=48)
    prompt = [engine.tokenizer.bos_id, 72, 105]
    want = engine.generate([prompt], stop=StopCriteria(max_new_tokens=20))[0].token_ids
    got = speculative_generate(engine, draft, prompt, max_new_tokens=20, gamma=3)
    assert got.token_ids == want
    assert got.proposed > 0


def test_acceptance_rule_keeps_target_distribution():
    rng = np.random.default_rng(0)
    V, g, n = 6, 3, 20000
    p = rng.dirichlet(np.ones(V), size=g + 1)
    q = rng.dirichlet(np.ones(V) * 0.5, size=g)
    first, second = np.zeros(V), np.zeros(V)
    for _ in range(n):
        drafts = np.array([rng.choice(V, p=q[i]) for i in range(g)])
        k, nxt = accept(p, q, drafts, rng)
        emitted = [*drafts[:k], nxt]
        first[emitted[0]] += 1
        if len(emitted) > 1:
            second[emitted[1]] += 1
    for counts, want in ((first, p[0]), (second, p[1])):
        _, pvalue = stats.chisquare(counts, counts.sum() * want)
        assert pvalue > 1e-3, (counts / counts.sum(), want)

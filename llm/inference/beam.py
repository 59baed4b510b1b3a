"""Beam search with a length penalty, over the engine's KV cache.

Keeps the W highest-scoring partial continuations (score = summed log-probability). Each
step extends every beam by every token, keeps the 2W best candidates, moves those ending in
EOS to the finished pool and the first W others on as the new beams; the cache rows are
reordered to follow their parents (`Cache.select_rows`). Finished hypotheses are ranked by
score / length ** length_penalty (length = generated tokens, EOS included), the
normalisation of Wu et al. (2016, arXiv:1609.08144) in its simple power form as used by
Hugging Face: > 0 favours longer outputs, < 0 shorter. Search stops when W hypotheses are
finished and no beam can still beat the worst of them (its score can only fall), or at
`max_new_tokens`, where the live beams are ranked with the finished ones.

`search` holds the bookkeeping over an abstract `step(parents, tokens) -> logprobs` so it can
be checked against exhaustive search on a toy model; `beam_search` plugs in the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm.inference import sampling
from llm.inference.engine import DecodeState, Engine
from llm.model import forward
from llm.model.cache import Cache, init_cache


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # generated ids, EOS excluded
    logprob: float  # summed log-probability (EOS included when finished by it)
    score: float  # logprob / length ** length_penalty


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


def search(
    first_logprobs_V: np.ndarray,
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | None,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Best-first hypotheses; `step(parent_rows_W, tokens_W)` returns the next logprobs_WV."""
    W = num_beams
    finished: list[Hypothesis] = []
    beams = [((), 0.0)]
    logprobs_WV = first_logprobs_V[None]
    for t in range(1, max_new_tokens + 1):
        total_WV = np.array([lp for _, lp in beams])[:, None] + logprobs_WV
        flat = np.argsort(-total_WV, axis=None, kind="stable")[: 2 * W]
        nxt, parents = [], []
        for index in flat:
            row, token = divmod(int(index), total_WV.shape[1])
            tokens, lp = beams[row][0], float(total_WV[row, token])
            if token == eos_id:
                finished.append(Hypothesis(tokens, lp, _score(lp, t, length_penalty)))
            elif len(nxt) < W:
                nxt.append(((*tokens, token), lp))
                parents.append(row)
        finished = sorted(finished, key=lambda h: -h.score)[:W]
        if not nxt or _done(finished, nxt, W, t, max_new_tokens, length_penalty):
            beams = nxt
            break
        beams = nxt
        if t < max_new_tokens:
            logprobs_WV = step(np.array(parents), np.array([tok[-1] for tok, _ in beams]))
    live = [Hypothesis(tok, lp, _score(lp, len(tok), length_penalty)) for tok, lp in beams]
    return sorted(finished + live, key=lambda h: -h.score)[:W]


def _done(finished, beams, W, t, max_new_tokens, length_penalty) -> bool:
    """W finished and the best live beam cannot overtake the worst of them."""
    if t >= max_new_tokens:
        return True
    if len(finished) < W:
        return False
    best_live = max(lp for _, lp in beams)
    # a live beam's logprob only falls; its best possible score uses its most favourable length
    lengths = (t + 1, max_new_tokens) if length_penalty > 0 else (t + 1,)
    bound = max(_score(best_live, n, length_penalty) for n in lengths)
    return bound <= finished[-1].score


@functools.partial(jax.jit, static_argnums=0)
def _advance(cfg, params, cache: Cache, parents_W, tokens_W):
    cache = cache.select_rows(parents_W)
    out = forward(cfg, params, tokens_W[:, None], cache=cache)
    return jax.nn.log_softmax(out.logits_BLV[:, 0].astype(jnp.float32)), out.cache


def beam_search(
    engine: Engine,
    prompt: Sequence[int],
    *,
    num_beams: int = 4,
    max_new_tokens: int = 32,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
) -> list[Hypothesis]:
    """The best `num_beams` continuations of `prompt`, best first."""
    engine.check_prompt(prompt)
    max_new_tokens = min(max_new_tokens, engine.max_len - len(prompt))
    state: DecodeState = engine.prefill([prompt], [sampling.GREEDY])
    first_V = _first_logprobs(engine, state, prompt)
    cache = state.cache.select_rows(jnp.zeros((num_beams,), jnp.int32))
    holder = {"cache": cache}

    def step(parents_W, tokens_W):
        pad = num_beams - len(parents_W)
        parents = np.concatenate([parents_W, np.zeros(pad, int)]).astype(np.int32)
        tokens = np.concatenate([tokens_W, np.zeros(pad, int)]).astype(np.int32)
        logprobs, holder["cache"] = _advance(
            engine.cfg, engine.params, holder["cache"], jnp.asarray(parents), jnp.asarray(tokens)
        )
        return np.asarray(logprobs)[: len(parents_W)]

    return search(first_V, step, num_beams=num_beams, max_new_tokens=max_new_tokens,
                  eos_id=eos_id, length_penalty=length_penalty)  # fmt: skip


def _first_logprobs(engine: Engine, state: DecodeState, prompt) -> np.ndarray:
    """Log-probabilities after the prompt: recompute the last position against the cache
    (a recurrent or Mamba model's state keeps no history to roll back: it reruns the
    prompt's start, then the last token, from an empty cache)."""
    if engine.cfg.recurrent or engine.cfg.arch == "mamba":
        head = engine.prefill([prompt[:-1]], [sampling.GREEDY]) if len(prompt) > 1 else None
        one = head.cache if head else init_cache(engine.cfg, 1, engine.max_len)
        logprobs, _ = _advance(engine.cfg, engine.params, one, jnp.zeros((1,), jnp.int32),
                               jnp.asarray([prompt[-1]], jnp.int32))  # fmt: skip
        return np.asarray(logprobs[0])
    one = state.cache.select_rows(jnp.zeros((1,), jnp.int32))
    one = one.rollback(one.lengths_B - 1)
    logprobs, _ = _advance(engine.cfg, engine.params, one, jnp.zeros((1,), jnp.int32),
                           jnp.asarray([prompt[-1]], jnp.int32))  # fmt: skip
    return np.asarray(logprobs[0])

"""Speculative decoding with a draft model (Leviathan et al., 2023, arXiv:2211.17192; Chen et
al., 2023, arXiv:2302.01318).

Each round the small draft model proposes `gamma` tokens one by one (distributions q_i), the
target scores all of them in one forward pass of gamma + 1 tokens (distributions p_i), and
draft token d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)). At the first
rejection the token is resampled from norm(max(0, p_i - q_i)); if all are accepted, one more
comes from p_{gamma+1}. The output then has exactly the target's distribution, and with greedy
settings (one-hot p and q) exactly the target's greedy tokens. Both caches roll back by
lowering their lengths (see `llm/model/kv_cache.py`): rejected entries are simply masked.

Batch size 1. Penalties and the watermark depend on the tokens inside the block, so they are
refused here; temperature, top-k/p, min-p and typical sampling are supported.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.inference import sampling
from llm.inference.engine import Engine
from llm.inference.sampling import SamplingParams
from llm.model import forward
from llm.model.kv_cache import KVCache
from llm.typing import Array, PyTree


@dataclasses.dataclass
class SpeculativeResult:
    token_ids: list[int]
    proposed: int  # draft tokens proposed
    accepted: int  # of which the target accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)


def accept(p_GV: np.ndarray, q_gV: np.ndarray, drafts_g: np.ndarray, rng) -> tuple[int, int]:
    """(accepted draft count n, the token after them) for one round; G = g + 1."""
    for i, d in enumerate(drafts_g):
        if rng.random() * q_gV[i, d] < p_GV[i, d]:  # u < p/q without dividing by q
            continue
        residual = np.maximum(p_GV[i] - q_gV[i], 0.0)
        return i, int(rng.choice(len(residual), p=residual / residual.sum()))
    return len(drafts_g), int(rng.choice(p_GV.shape[1], p=p_GV[-1]))


def _probs(logits_BV: Array, s) -> Array:
    """The distribution each row samples from (one-hot at the argmax for greedy rows)."""
    l_BV = sampling.processed_logits(logits_BV, s)
    greedy_BV = jax.nn.one_hot(jnp.argmax(l_BV, -1), l_BV.shape[-1])
    return jnp.where(s.temperature_B[:, None] > 0, jax.nn.softmax(l_BV, -1), greedy_BV)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _propose(cfg: ModelConfig, params: PyTree, cache: KVCache, token_1: Array, s, gamma: int):
    """gamma draft tokens and their distributions, starting by feeding `token_1`."""

    def body(carry, _):
        cache, token_1, s = carry
        out = forward(cfg, params, token_1[:, None], cache=cache)
        q_1V = _probs(out.logits_BLV[:, 0], s)
        key = sampling.row_keys(s)[0]
        d_1 = jax.random.categorical(key, jnp.log(q_1V))
        s = s.replace(steps_B=s.steps_B + 1)
        return (out.cache, d_1.astype(jnp.int32), s), (d_1[0], q_1V[0])

    (cache, _, s), (drafts_g, q_gV) = jax.lax.scan(body, (cache, token_1, s), length=gamma)
    return drafts_g, q_gV, cache, s


@functools.partial(jax.jit, static_argnums=0)
def _verify(cfg: ModelConfig, params: PyTree, cache: KVCache, tokens_1G: Array, s):
    out = forward(cfg, params, tokens_1G, cache=cache)
    G = tokens_1G.shape[1]
    s_G = jax.tree.map(lambda x: jnp.repeat(x, G, axis=0), s)
    return _probs(out.logits_BLV[0], s_G), out.cache


@functools.partial(jax.jit, static_argnums=0)
def _feed(cfg: ModelConfig, params: PyTree, cache: KVCache, token_1: Array) -> KVCache:
    return forward(cfg, params, token_1[:, None], cache=cache, return_logits=False).cache


def speculative_generate(
    target: Engine,
    draft: Engine,
    prompt: list[int],
    params: SamplingParams = sampling.GREEDY,
    *,
    max_new_tokens: int = 32,
    gamma: int = 4,
) -> SpeculativeResult:
    """Up to `max_new_tokens` tokens from the target's distribution (no stop handling)."""
    if params.repetition_penalty != 1 or params.frequency_penalty or params.presence_penalty \
            or params.watermark_delta:  # fmt: skip
        raise ValueError("speculative decoding supports no penalties and no watermark")
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"vocabularies differ: target {target.cfg.vocab_size}, "
                         f"draft {draft.cfg.vocab_size}")  # fmt: skip
    limit = min(target.max_len, draft.max_len)
    max_new_tokens = min(max_new_tokens, limit - len(prompt) - gamma - 1)
    if max_new_tokens < 1:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room for gamma={gamma}")
    t_state = target.prefill([prompt], [params])
    d_cache = draft.prefill([prompt], [params]).cache
    t_cache, s = t_state.cache, t_state.sampler
    rng = np.random.default_rng(params.seed)
    out, proposed, accepted = [int(t_state.tokens_B[0])], 0, 0
    while len(out) < max_new_tokens:
        x_1 = jnp.asarray([out[-1]], jnp.int32)
        base = int(t_cache.lengths_B[0])
        drafts, q, d_cache, s = _propose(draft.cfg, draft.params, d_cache, x_1, s, gamma)
        tokens_1G = jnp.concatenate([x_1, drafts])[None]
        p, t_cache = _verify(target.cfg, target.params, t_cache, tokens_1G, s)
        n, nxt = accept(np.asarray(p, np.float64), np.asarray(q, np.float64),
                        np.asarray(drafts), rng)  # fmt: skip
        proposed, accepted = proposed + gamma, accepted + n
        if n == gamma:
            d_cache = _feed(draft.cfg, draft.params, d_cache, drafts[-1:])
        keep = jnp.asarray([base + 1 + n], jnp.int32)
        t_cache, d_cache = t_cache.replace(lengths_B=keep), d_cache.replace(lengths_B=keep)
        out += [int(t) for t in np.asarray(drafts)[:n]] + [nxt]
    return SpeculativeResult(out[:max_new_tokens], proposed, accepted)

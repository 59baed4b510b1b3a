"""Speculative decoding (Leviathan et al., 2023, arXiv:2211.17192; Chen et al., 2023,
arXiv:2302.01318) with a pluggable drafter, for a batch of sequences.

Each round a drafter proposes up to gamma tokens per sequence, the target scores them in one
forward pass over [latest token, drafts] (gamma + 1 tokens), and draft d_i is kept with
probability min(1, p_i(d_i) / q_i(d_i)), p the target's and q the drafter's distribution. At
the first rejection the next token is drawn from norm(max(0, p_i - q_i)); if every draft is
kept, from the p after the last one. Each round therefore emits between 1 and gamma + 1
tokens, and the output has exactly the target's distribution whatever the drafter proposes;
with greedy settings (one-hot p and q) it is the target's greedy output, token for token.

Drafters (the `Drafter` protocol):
* `DraftModel`: a smaller model samples the drafts; q is its distribution under the same
  sampling settings.
* `NGramDrafter` (`ngram_draft.py`): prompt lookup decoding, no model. Its proposal is a
  deterministic function of the context, so q is one-hot on the draft: d is kept with
  probability p(d), and a rejection resamples from p with d removed.

Batching: every sequence keeps its own number of drafts per round (a drafter may propose fewer
than gamma, an n-gram drafter often none) and of accepted tokens. The verified block is
right-padded with segment id 0, so one compiled step serves every round, and rollback is
per row: the target cache is rolled back to the kept tokens (`Cache.rollback`; in a KV
cache the entries above are masked, `llm/model/kv_cache.py`). Proposals are capped so that
a round never emits past a row's budget, so a row needs no more room than plain decoding:
prompt + max_new_tokens <= max_len.

Randomness per row, like `sampling.py`: draft i of a round uses the key of (seed, tokens so
far + i), the acceptance draws that of (seed, tokens so far) folded with a salt. A key that
influenced an emitted token is never used again, so every draw is fresh.

Penalties and the watermark depend on the tokens inside the block, so they are refused;
temperature, top-k/p, min-p and typical sampling are supported. No stop tokens or strings.
Shape letters as in `llm/typing.py`, plus g = gamma (drafts) and T = g + 1 (verified block).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llm.config import ModelConfig
from llm.inference import sampling
from llm.inference.engine import Engine
from llm.inference.sampling import SamplerState, SamplingParams
from llm.model import forward
from llm.model.cache import Cache
from llm.typing import Array, PyTree

_ACCEPT_SALT = 0x5EC  # folded into a row's key for the acceptance draws


@dataclasses.dataclass
class SpeculativeResult:
    """One sequence's tokens and what speculation did for it."""

    token_ids: list[int]
    proposed: int  # draft tokens proposed
    accepted: int  # of which the target accepted
    target_forwards: int  # prefill + verification passes (plain decoding: one per token)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)

    @property
    def tokens_per_forward(self) -> float:
        return len(self.token_ids) / max(self.target_forwards, 1)


@struct.dataclass
class Proposal:
    """A round's drafts. Entries of row b at or past `sizes_B[b]` are padding."""

    drafts_Bg: Array  # int32 proposed tokens
    sizes_B: Array  # int32 number of real drafts per row, 0..g
    q_BgV: Array | None = None  # the drafter's distributions; None: deterministic (one-hot)


class Drafter(Protocol):
    """Proposes tokens for the target to verify, keeping its own state between rounds."""

    max_len: int | None  # longest sequence it can follow (None: no limit)

    def start(
        self, target: Engine, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> None:
        """Prepares for new sequences (called just before the target prefills `prompts`)."""

    def propose(
        self,
        history: Sequence[Sequence[int]],
        last_B: Array,
        s: SamplerState,
        limits_B: np.ndarray,
        gamma: int,
    ) -> Proposal:
        """At most min(gamma, limits_B[b]) drafts to follow `history[b]` (prompt + output; its
        last token, `last_B[b]`, is in no cache yet). B may exceed len(history): padding rows."""

    def commit(self, accepted_B: np.ndarray, lengths_B: Array) -> None:
        """Row b kept `accepted_B[b]` drafts; the target cache now holds `lengths_B` tokens."""


def accept(
    p_BTV: Array, q_BgV: Array | None, drafts_Bg: Array, sizes_B: Array, key_B: Array
) -> tuple[Array, Array]:
    """The acceptance rule for every row at once: (kept drafts n_B, the token after them).

    Draft i < sizes_B[b] is kept while u_i * q_i(d_i) < p_i(d_i), u_i ~ U[0, 1): probability
    min(1, p/q) without dividing by q. The next token comes from norm(max(0, p_n - q_n)) at
    the first rejection n; position sizes_B[b] has no draft (q = 0 there), so after a full
    acceptance it is drawn from p itself. `q_BgV=None` means one-hot q on the drafts.
    """
    B, T, V = p_BTV.shape
    valid_Bg = jnp.arange(T - 1)[None] < sizes_B[:, None]
    if q_BgV is None:
        q_BgV = jax.nn.one_hot(drafts_Bg, V, dtype=p_BTV.dtype)
    q_BgV = jnp.where(valid_Bg[..., None], q_BgV, 0.0)  # where, not *: padding may be NaN
    q_BTV = jnp.concatenate([q_BgV, jnp.zeros((B, 1, V), q_BgV.dtype)], axis=1)
    p_d_Bg = jnp.take_along_axis(p_BTV[:, :-1], drafts_Bg[..., None], -1)[..., 0]
    q_d_Bg = jnp.take_along_axis(q_BgV, drafts_Bg[..., None], -1)[..., 0]
    u_key_B, r_key_B = jax.vmap(jax.random.split, out_axes=1)(key_B)
    u_Bg = jax.vmap(lambda k: jax.random.uniform(k, (T - 1,)))(u_key_B)
    kept_Bg = valid_Bg & (u_Bg * q_d_Bg < p_d_Bg)
    n_B = jnp.cumprod(kept_Bg, axis=1).sum(1).astype(jnp.int32)
    p_n_BV = jnp.take_along_axis(p_BTV, n_B[:, None, None], 1)[:, 0]
    q_n_BV = jnp.take_along_axis(q_BTV, n_B[:, None, None], 1)[:, 0]
    residual_BV = jnp.maximum(p_n_BV - q_n_BV, 0.0)
    residual_BV = jnp.where(residual_BV.sum(-1, keepdims=True) > 0, residual_BV, p_n_BV)
    next_B = jax.vmap(jax.random.categorical)(r_key_B, jnp.log(residual_BV))
    return n_B, next_B.astype(jnp.int32)


def accept_keys(s: SamplerState) -> Array:
    """Each row's key for this round's acceptance draws: its sampling key, salted, so no draft
    (which uses the keys of later token counts) or plain sample shares it."""
    return jax.vmap(lambda k: jax.random.fold_in(k, _ACCEPT_SALT))(sampling.row_keys(s))


def _probs(logits_BV: Array, s: SamplerState) -> Array:
    """The distribution each row samples from (one-hot at the argmax for greedy rows)."""
    l_BV = sampling.processed_logits(logits_BV, s)
    greedy_BV = jax.nn.one_hot(jnp.argmax(l_BV, -1), l_BV.shape[-1])
    return jnp.where(s.temperature_B[:, None] > 0, jax.nn.softmax(l_BV, -1), greedy_BV)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _verify(
    cfg: ModelConfig,
    params: PyTree,
    cache: Cache,
    last_B: Array,
    proposal: Proposal,
    limits_B: Array,
    active_B: Array,
    s: SamplerState,
) -> tuple[Array, Array, Cache]:
    """One target pass over [last, drafts] of the active rows: (kept drafts n_B, next token
    per row, the cache rolled back to the kept tokens). Inactive rows change nothing."""
    sizes_B = jnp.where(active_B, jnp.minimum(proposal.sizes_B, limits_B), 0)
    tokens_BT = jnp.concatenate([last_B[:, None], proposal.drafts_Bg], axis=1)
    B, T = tokens_BT.shape
    in_block_BT = jnp.arange(T)[None] <= sizes_B[:, None]
    segment_ids_BT = (in_block_BT & active_B[:, None]).astype(jnp.int32)
    out = forward(cfg, params, tokens_BT, segment_ids_BL=segment_ids_BT, cache=cache)
    s_T = jax.tree.map(lambda x: jnp.repeat(x, T, axis=0), s)  # row b*T + t
    p_BTV = _probs(out.logits_BLV.reshape(B * T, -1), s_T).reshape(B, T, -1)
    n_B, next_B = accept(p_BTV, proposal.q_BgV, proposal.drafts_Bg, sizes_B, accept_keys(s))
    lengths_B = jnp.where(active_B, cache.lengths_B + 1 + n_B, cache.lengths_B)
    return n_B, jnp.where(active_B, next_B, last_B), out.cache.rollback(lengths_B)


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=2)
def _draft(cfg: ModelConfig, params: PyTree, cache: Cache, last_B: Array, s, gamma: int):
    """(drafts_Bg, q_BgV, cache): gamma tokens per row sampled from the draft model, which
    is fed `last_B` and then its own drafts (all but the last one, which it never sees)."""

    def body(carry, i):
        cache, token_B = carry
        out = forward(cfg, params, token_B[:, None], cache=cache)
        q_BV = _probs(out.logits_BLV[:, 0], s)
        keys_B = sampling.row_keys(s.replace(steps_B=s.steps_B + i))
        d_B = jax.vmap(jax.random.categorical)(keys_B, jnp.log(q_BV)).astype(jnp.int32)
        return (out.cache, d_B), (d_B, q_BV)

    (cache, _), (drafts_gB, q_gBV) = jax.lax.scan(body, (cache, last_B), jnp.arange(gamma))
    return drafts_gB.T, q_gBV.transpose(1, 0, 2), cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _feed(cfg: ModelConfig, params: PyTree, cache: Cache, token_B: Array, rows_B: Array):
    """The cache after appending `token_B` to the rows where `rows_B` is set."""
    segment_ids_B1 = rows_B[:, None].astype(jnp.int32)
    return forward(cfg, params, token_B[:, None], segment_ids_BL=segment_ids_B1, cache=cache,
                   return_logits=False).cache  # fmt: skip


class DraftModel:
    """A smaller model with the target's vocabulary that samples the drafts one by one.

    Its cache follows the target's: after each round it is rolled back to the target's
    lengths, and a row that kept all gamma drafts first feeds the last one, which the draft
    model proposed but never consumed.
    """

    def __init__(self, engine: Engine):
        self.engine, self.max_len = engine, engine.max_len
        self._cache: Cache | None = None
        self._drafts_Bg: Array | None = None

    def start(
        self, target: Engine, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> None:
        if target.cfg.vocab_size != self.engine.cfg.vocab_size:
            raise ValueError(f"vocabularies differ: target {target.cfg.vocab_size}, "
                             f"draft {self.engine.cfg.vocab_size}")  # fmt: skip
        self._cache = self.engine.prefill(prompts, params).cache

    def propose(
        self, history, last_B: Array, s: SamplerState, limits_B: np.ndarray, gamma: int
    ) -> Proposal:
        e = self.engine
        drafts_Bg, q_BgV, self._cache = _draft(e.cfg, e.params, self._cache, last_B, s, gamma)
        self._drafts_Bg = drafts_Bg
        return Proposal(drafts_Bg, jnp.asarray(limits_B, jnp.int32), q_BgV)

    def commit(self, accepted_B: np.ndarray, lengths_B: Array) -> None:
        full_B = accepted_B == self._drafts_Bg.shape[1]
        if full_B.any():
            e = self.engine
            last_B = self._drafts_Bg[:, -1]
            self._cache = _feed(e.cfg, e.params, self._cache, last_B, jnp.asarray(full_B))
        # a copy: the next `_draft` donates this cache, and the target's lengths must
        # survive it whatever buffer `rollback` keeps
        self._cache = self._cache.rollback(jnp.copy(lengths_B))


def _check(params: Sequence[SamplingParams], n: int, gamma: int, max_new_tokens: int) -> None:
    if gamma < 1:
        raise ValueError(f"{gamma=} must be >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"{max_new_tokens=} must be >= 1")
    if n == 0 or len(params) != n:
        raise ValueError(f"need one or more prompts and one SamplingParams each; got {n} "
                         f"prompts, {len(params)} params")  # fmt: skip
    for p in params:
        if p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty \
                or p.watermark_delta:  # fmt: skip
            raise ValueError("speculative decoding supports no penalties and no watermark")


def speculative_generate(
    target: Engine,
    drafter: Drafter,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] = sampling.GREEDY,
    *,
    max_new_tokens: int = 32,
    gamma: int = 4,
) -> list[SpeculativeResult]:
    """Up to `max_new_tokens` tokens per prompt from the target's distribution (fewer where
    the context runs out, as with `Engine.generate`); no stop handling."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    _check(params, len(prompts), gamma, max_new_tokens)
    drafter.start(target, prompts, params)  # first: a drafter's complaint costs no prefill
    state = target.prefill(prompts, params)
    cache, s, last_B = state.cache, state.sampler, state.tokens_B
    n = len(prompts)
    limit = min(target.max_len, drafter.max_len or target.max_len)
    room = np.zeros(last_B.shape[0], np.int64)  # rows padding the batch bucket get none
    room[:n] = [min(max_new_tokens, limit - len(p)) for p in prompts]
    history = [[*p, t] for p, t in zip(prompts, np.asarray(last_B)[:n].tolist(), strict=True)]
    done = np.minimum(room, 1)  # tokens generated per row (the prefill made the first)
    counts = np.zeros((n, 3), np.int64)  # per row: proposed, accepted, verification passes
    while (active := done < room).any():
        limits = np.clip(room - done - 1, 0, gamma)  # a round emits at most limits + 1
        proposal = drafter.propose(history, last_B, s, limits, gamma)
        n_B, last_B, cache = _verify(target.cfg, target.params, cache, last_B, proposal,
                                     jnp.asarray(limits), jnp.asarray(active), s)  # fmt: skip
        kept = np.asarray(n_B) * active
        _record(history, counts, active, kept, np.asarray(last_B), proposal, limits)
        done += (kept + 1) * active
        s = s.replace(steps_B=s.steps_B + jnp.asarray((kept + 1) * active, jnp.int32))
        drafter.commit(kept, cache.lengths_B)
    return [
        SpeculativeResult(h[len(p) :], int(c[0]), int(c[1]), int(c[2]) + 1)
        for h, p, c in zip(history, prompts, counts, strict=True)
    ]


def _record(history, counts, active, kept, next_B, proposal: Proposal, limits) -> None:
    """Host bookkeeping of a round: each active row's emitted tokens and its counts."""
    drafts = np.asarray(proposal.drafts_Bg)
    sizes = np.minimum(np.asarray(proposal.sizes_B), limits)
    for b in np.flatnonzero(active):
        history[b] += [*drafts[b, : kept[b]].tolist(), int(next_B[b])]
        counts[b] += (sizes[b], kept[b], 1)

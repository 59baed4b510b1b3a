"""The generation engine: prefill, then one token per sequence per step over a KV cache.

* Static shapes: the cache holds `max_len` slots for each of B rows (see
  `llm/model/kv_cache.py`); prompts are right-padded to a length bucket (powers of two) and
  batches to a batch bucket, so each function compiles once per bucket, not per request.
* The cache is opaque here: the engine and the decoders built on it (beam search,
  speculative decoding) use only the `llm.model.cache.Cache` protocol, so a model with
  another decoding state needs no change in `llm/inference/`.
* Ragged batches: every row has its own length; a prompt's tokens fill slots 0..n-1 and its
  padding carries segment id 0, which masks it out and does not advance the row's length.
* The decode step fuses the forward with sampling (`sampling.py`) and donates the state, so
  the cache is updated in place and only B token ids (and their log-probabilities, which
  RL rollouts read: `sampling.sample_with_logprobs`) come back to the host each step.
* Rows are slots: `prefill` fills chosen slots of a running state (continuous batching in
  the server joins new requests this way between decode steps); inactive rows ride along
  with segment id 0 and change nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llm.config import ModelConfig
from llm.inference import sampling
from llm.inference.sampling import SamplerState, SamplingParams
from llm.inference.stream import TextStream
from llm.model import forward, unembed, unstack_layers
from llm.model.cache import Cache, init_cache
from llm.tokenizers.base import Tokenizer
from llm.typing import Array, PyTree

MIN_PROMPT_BUCKET = 8


@struct.dataclass
class DecodeState:
    """Everything a decode step reads and writes, on device: cache, sampler, latest tokens."""

    cache: Cache
    sampler: SamplerState
    tokens_B: Array  # each row's newest token: sampled, not yet in the cache
    logp_B: Array  # float32 log-probability of tokens_B under the distribution it was drawn
    # from (`sampling.sample_with_logprobs`); RL rollouts read it as the policy's log-prob


@dataclasses.dataclass(frozen=True)
class StopCriteria:
    """When a sequence ends (finish_reason "stop" for a stop token/string, else "length")."""

    max_new_tokens: int = 64  # at most this many generated tokens
    stop_token_ids: tuple[int, ...] = ()  # any of these ends the sequence (not emitted)
    stop_strings: tuple[str, ...] = ()  # the text ends before the first of these


@dataclasses.dataclass(frozen=True)
class Event:
    """One streamed update of sequence `index`: a token and the text it settled."""

    index: int
    token: int | None  # None on the closing event of a sequence ended by its limit
    text: str  # newly settled text (may be empty: held back, see stream.py)
    finish_reason: str | None = None  # "stop" | "length" on the sequence's last event
    logprob: float | None = None  # the token's log-probability (sample_with_logprobs)


@dataclasses.dataclass
class Completion:
    """A finished sequence: generated ids (stop token excluded), text and why it ended, and
    each id's log-probability under the distribution it was drawn from (aligned with ids)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] = dataclasses.field(default_factory=list)


def bucket(n: int, smallest: int, largest: int) -> int:
    """The power of two >= n (at least `smallest`), capped at `largest`."""
    return min(largest, max(smallest, 1 << (max(n, 1) - 1).bit_length()))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _prefill(
    cfg: ModelConfig, params: PyTree, tokens_BP: Array, lengths_B: Array, max_len: int, s
) -> DecodeState:
    B, P = tokens_BP.shape
    segment_ids_BP = (jnp.arange(P)[None] < lengths_B[:, None]).astype(jnp.int32)
    cache = init_cache(cfg, B, max_len)
    out = forward(cfg, params, tokens_BP, segment_ids_BL=segment_ids_BP, cache=cache,
                  return_logits=False)  # fmt: skip
    last_B1D = jnp.take_along_axis(out.hidden_BLD, (lengths_B - 1)[:, None, None], axis=1)
    tokens_B, logp_B = sampling.sample_with_logprobs(unembed(cfg, params, last_B1D)[:, 0], s)
    s = sampling.record(s, tokens_B, jnp.ones_like(lengths_B, bool))
    return DecodeState(out.cache, s, tokens_B, logp_B)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step(cfg: ModelConfig, params: PyTree, state: DecodeState, active_B: Array) -> DecodeState:
    segment_ids_B1 = active_B[:, None].astype(jnp.int32)
    out = forward(cfg, params, state.tokens_B[:, None], segment_ids_BL=segment_ids_B1,
                  cache=state.cache)  # fmt: skip
    tokens_B, logp_B = sampling.sample_with_logprobs(out.logits_BLV[:, 0], state.sampler)
    tokens_B = jnp.where(active_B, tokens_B, state.tokens_B)
    logp_B = jnp.where(active_B, logp_B, state.logp_B)
    sampler = sampling.record(state.sampler, tokens_B, active_B)
    return DecodeState(out.cache, sampler, tokens_B, logp_B)


@functools.partial(jax.jit, donate_argnums=0)
def _insert(state: DecodeState, new: DecodeState, slots_b: Array) -> DecodeState:
    """`state` with rows `slots_b` replaced by the rows of `new` (out-of-range slots dropped)."""

    def put(big, small):
        return big.at[slots_b].set(small, mode="drop")

    return DecodeState(
        state.cache.put_rows(slots_b, new.cache),
        jax.tree.map(put, state.sampler, new.sampler),
        put(state.tokens_B, new.tokens_B),
        put(state.logp_B, new.logp_B),
    )


class Engine:
    """Generation with one model: `generate` / `stream` for batches, slots for servers."""

    def __init__(
        self,
        cfg: ModelConfig,
        params: PyTree,
        tokenizer: Tokenizer | None = None,
        *,
        max_len: int | None = None,
    ):
        # the decode layout: per-layer weight buffers, so decode steps read them in place
        self.cfg, self.params, self.tokenizer = cfg, unstack_layers(params), tokenizer
        self.max_len = max_len or cfg.max_seq_len
        learned = cfg.arch == "transformer" and cfg.pos_encoding == "learned"  # baselines: none
        if learned and self.max_len > cfg.max_seq_len:
            raise ValueError(
                f"max_len={self.max_len} exceeds the learned position table "
                f"(model.max_seq_len={cfg.max_seq_len})"
            )

    # ---- slot-level API (the server's continuous batching uses these) ----

    def empty_state(self, batch: int) -> DecodeState:
        """A state of `batch` idle rows."""
        params = [sampling.GREEDY] * batch
        s = sampling.make_sampler_state(params, [[0]] * batch, self.cfg.vocab_size)
        cache = init_cache(self.cfg, batch, self.max_len)
        zeros_B = jnp.zeros((batch,), jnp.int32)
        return DecodeState(cache, s, zeros_B, jnp.zeros((batch,), jnp.float32))

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """Raises ValueError unless the prompt is non-empty, in-vocabulary and leaves room."""
        if not prompt:
            raise ValueError("prompt is empty: at least one token is needed")
        if len(prompt) >= self.max_len:
            raise ValueError(
                f"prompt has {len(prompt)} tokens; the context holds {self.max_len}, "
                "so at most max_len - 1 leaves room for one new token"
            )
        bad = [t for t in prompt if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside the vocabulary [0, {self.cfg.vocab_size})"
            )

    def prefill(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> DecodeState:
        """A fresh state whose rows hold `prompts` (padded to a batch bucket) and first tokens."""
        for prompt in prompts:
            self.check_prompt(prompt)
        n = len(prompts)
        B = bucket(n, 1, 1 << 30)
        P = bucket(max(len(p) for p in prompts), MIN_PROMPT_BUCKET, self.max_len)
        rows = [list(p) for p in prompts] + [[0]] * (B - n)
        tokens = np.zeros((B, P), np.int32)
        for i, ids in enumerate(rows):
            tokens[i, : len(ids)] = ids
        lengths = jnp.asarray([len(r) for r in rows], jnp.int32)
        s = sampling.make_sampler_state(list(params) + [sampling.GREEDY] * (B - n), rows,
                                        self.cfg.vocab_size)  # fmt: skip
        return _prefill(self.cfg, self.params, jnp.asarray(tokens), lengths, self.max_len, s)

    def insert(self, state: DecodeState, new: DecodeState, slots: Sequence[int]) -> DecodeState:
        """`state` (donated) with its rows `slots` replaced by the first rows of `new`."""
        padded = list(slots) + [state.tokens_B.shape[0]] * (new.tokens_B.shape[0] - len(slots))
        return _insert(state, new, jnp.asarray(padded, jnp.int32))

    def step(self, state: DecodeState, active: np.ndarray) -> DecodeState:
        """One token for every active row (the state is donated)."""
        return _step(self.cfg, self.params, state, jnp.asarray(active, bool))

    # ---- batch API ----

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] = sampling.GREEDY,
        stop: StopCriteria = StopCriteria(),
    ) -> Iterator[Event]:
        """Generates for every prompt at once, yielding each token as it is produced."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if stop.stop_strings and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        state = self.prefill(prompts, params)
        rows = [RowTracker(self, len(p), stop) for p in prompts]
        active = np.zeros(state.tokens_B.shape[0], bool)
        active[: len(prompts)] = True
        while True:
            tokens, logps = np.asarray(state.tokens_B), np.asarray(state.logp_B)
            for i, row in enumerate(rows):
                if active[i]:
                    yield from row.accept(i, int(tokens[i]), float(logps[i]))
                    active[i] = row.finish_reason is None
            if not active.any():
                return
            state = self.step(state, active)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] = sampling.GREEDY,
        stop: StopCriteria = StopCriteria(),
    ) -> list[Completion]:
        """`stream`, collected: one Completion per prompt."""
        ids: list[list[int]] = [[] for _ in prompts]
        texts: list[list[str]] = [[] for _ in prompts]
        logps: list[list[float]] = [[] for _ in prompts]
        reasons: list[str] = [""] * len(prompts)
        for event in self.stream(prompts, params, stop):
            if event.token is not None and event.finish_reason != "stop":
                ids[event.index].append(event.token)
                logps[event.index].append(event.logprob)
            texts[event.index].append(event.text)
            reasons[event.index] = event.finish_reason or reasons[event.index]
        return [
            Completion(i, "".join(t), r, lp)
            for i, t, r, lp in zip(ids, texts, reasons, logps, strict=True)
        ]


class RowTracker:
    """Host-side bookkeeping of one sequence: counts, stop checks, text stream."""

    def __init__(self, engine: Engine, prompt_len: int, stop: StopCriteria):
        self.stop, self.generated, self.finish_reason = stop, 0, None
        self.room = min(stop.max_new_tokens, engine.max_len - prompt_len)
        tok = engine.tokenizer
        self.text = TextStream(tok, stop.stop_strings) if tok is not None else None

    def accept(self, index: int, token: int, logprob: float | None = None) -> list[Event]:
        """The events a newly sampled token produces (its own, and the closing one)."""
        if token in self.stop.stop_token_ids:
            self.finish_reason = "stop"
            return [Event(index, token, self._flush(), "stop", logprob)]
        self.generated += 1
        text = self.text.push(token) if self.text is not None else ""
        if self.text is not None and self.text.stopped:
            self.finish_reason = "stop"
            return [Event(index, token, text, "stop", logprob)]
        if self.generated >= self.room:
            self.finish_reason = "length"
            return [
                Event(index, token, text, logprob=logprob),
                Event(index, None, self._flush(), "length"),
            ]
        return [Event(index, token, text, logprob=logprob)]

    def _flush(self) -> str:
        return self.text.finish() if self.text is not None else ""

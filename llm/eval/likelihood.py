"""Log-likelihood scoring of text under a model, as lm-evaluation-harness defines it.

    scorer = Scorer(load_model("runs/default"), batch_size=8)
    scorer.loglikelihood([("Question: 2+2=? Answer:", " 4")])   # [LogLikelihood(...)]
    scorer.loglikelihood_rolling(["a whole document ..."])       # perplexity of each text
    scorer.generate_until([("Q: ... A:", ["\\n"], 32)])           # greedy answers

Definitions (those of lm-evaluation-harness, Gao et al. 2021-2024, "The Language Model
Evaluation Harness", doi:10.5281/zenodo.5371628, `lm_eval/api/model.py` and `lm_eval/utils.py`):

* log-likelihood of a continuation c given a context x: sum over c's tokens of
  log p(c_t | x, c_<t), natural log, with the vocabulary's log-softmax taken in float32
  (as the training cross-entropy is, `llm.ops.cross_entropy.token_losses`), so it is minus
  the training loss of the same tokens. `is_greedy`: every c_t is the argmax at its position.
* tokenisation: trailing whitespace of the context moves onto the continuation ("Answer: "
  + "B" scores " B"); the context is encoded alone, the continuation is what the encoding of
  context + continuation adds after the context's tokens (the harness's `_encode_pair`), and
  BOS goes first when `add_bos`. An empty context (without BOS) conditions on BOS, the
  harness's prefix token.
* an over-long request keeps its continuation and the last context tokens that fit: the
  row is the last max_len + 1 tokens (the harness's `(context + continuation)[-(max_len+1):]`);
  `Scorer.truncated` counts such requests and `Scorer.truncated_tokens` the tokens cut.
* rolling log-likelihood of a text (perplexity tasks): the text's tokens, predicted in
  disjoint windows of max_len with one token of context (`get_rolling_token_windows` with
  context_len=1, then `make_disjoint_window`): the first window predicts tokens 0..max_len-1
  from BOS onwards, each later window predicts its next n tokens given the max_len + 1 - n
  tokens before them (a row of max_len + 1 tokens), so every token is predicted once, with as
  much context as fits.

The fast path pads rows to a few bucketed lengths (four per octave, at least 16, capped at
max_len: `bucket_length`) and a fixed batch size, so it compiles once per bucket; requests
are sorted by length (longest first, as the harness does) and the results put back in
request order. Logits are computed only at the continuation's positions.
`reference_loglikelihood` scores one unpadded request at a time: the tests hold the two equal.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm.checkpoint import LoadedModel
from llm.inference import GREEDY, Engine, StopCriteria
from llm.inference.engine import bucket
from llm.model import forward, unembed
from llm.typing import Array, PyTree

MIN_BUCKET = 16  # shortest padded row length


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """The score of one continuation (or one whole text, for the rolling variant)."""

    logprob: float  # sum of log p(continuation tokens | context), natural log
    is_greedy: bool  # every continuation token is the argmax at its position
    n_tokens: int  # continuation tokens scored


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    """A request in token space: score `continuation` after `context` (both non-empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def bucket_length(n: int, max_len: int) -> int:
    """The padded length for n tokens: n rounded up to an eighth of the power of two above it
    (16, 24, 32, 40, 48, 56, 64, 80, 96, ..., 128, 160, ...), at least 16, at most max_len.
    Four buckets per octave waste under a quarter of a row on padding (powers of two alone
    waste up to half) and keep the compiles per task few."""
    step = max(MIN_BUCKET // 2, (1 << (max(n, 1) - 1).bit_length()) // 8)
    return min(max_len, max(MIN_BUCKET, -(-n // step) * step))


def row_reduce(logits_LV: Array, targets_L: Array, mask_L: Array) -> tuple[Array, Array]:
    """([L] float32 log p(target), 0 off the mask; every masked target is the argmax)."""
    logits_LV = logits_LV.astype(jnp.float32)
    logp_LV = jax.nn.log_softmax(logits_LV, axis=-1)
    picked_L = jnp.take_along_axis(logp_LV, targets_L[:, None], axis=-1)[:, 0]
    greedy_L = jnp.argmax(logits_LV, axis=-1) == targets_L
    return jnp.where(mask_L, picked_L, 0.0), jnp.all(greedy_L | ~mask_L)


@functools.partial(jax.jit, static_argnums=0)
def _score_rows(
    cfg: Any, params: PyTree, inputs_BL: Array, start_B: Array, targets_BC: Array, mask_BC: Array
) -> tuple[Array, Array]:
    """[B, C] log-probabilities of the continuations (0 off the mask) and [B] greedy flags.

    Row b holds its tokens' inputs right-padded with -1 (segment id 0, which the attention
    mask hides); its continuation's targets are predicted at inputs start_b .. start_b + C - 1.
    Logits are made only there (C is the continuation bucket, often far below L) and one row
    at a time (`lax.map`), so memory holds C x V float32 logits, not B x L x V (V is 49k for
    SmolLM2). The host sums each row in float64."""
    B, L = inputs_BL.shape
    lengths_B = jnp.sum(inputs_BL >= 0, axis=1)
    segment_ids_BL = (jnp.arange(L)[None] < lengths_B[:, None]).astype(jnp.int32)
    positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    out = forward(cfg, params, jnp.maximum(inputs_BL, 0), positions_BL=positions_BL,
                  segment_ids_BL=segment_ids_BL, return_logits=False)  # fmt: skip
    index_BC = jnp.minimum(start_B[:, None] + jnp.arange(targets_BC.shape[1]), L - 1)
    hidden_BCD = jnp.take_along_axis(out.hidden_BLD, index_BC[:, :, None], axis=1)

    def one(row):
        hidden_CD, targets_C, mask_C = row
        return row_reduce(unembed(cfg, params, hidden_CD[None])[0], targets_C, mask_C)

    return jax.lax.map(one, (hidden_BCD, targets_BC, mask_BC))


_forward = jax.jit(forward, static_argnums=0)  # the plain forward, compiled once per length


def reference_loglikelihood(cfg: Any, params: PyTree, request: TokenRequest) -> LogLikelihood:
    """One request, unpadded and unbatched: the plain definition the fast path must equal."""
    tokens = list(request.context) + list(request.continuation)
    inputs_1L = jnp.asarray([tokens[:-1]], jnp.int32)
    logits_LV = _forward(cfg, params, inputs_1L).logits_BLV[0].astype(jnp.float32)
    n = len(request.continuation)
    logp_LV = np.asarray(jax.nn.log_softmax(logits_LV, axis=-1))[-n:]
    targets = np.asarray(request.continuation)
    logprob = float(np.sum(logp_LV[np.arange(n), targets], dtype=np.float64))
    return LogLikelihood(logprob, bool(np.all(logp_LV.argmax(-1) == targets)), n)


class Scorer:
    """Log-likelihood, rolling log-likelihood and greedy generation with one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        batch_size: int = 8,
        max_len: int | None = None,
        add_bos: bool = True,
    ):
        self.model, self.tokenizer = model, model.tokenizer
        self.cfg, self.params = model.config.model, model.params
        self.batch_size, self.add_bos = batch_size, add_bos
        self.max_len = max_len or self.cfg.max_seq_len
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if self.max_len < 2 or self.max_len > self.cfg.max_seq_len:
            raise ValueError(
                f"max_len={self.max_len} must be in [2, model.max_seq_len={self.cfg.max_seq_len}]"
            )
        self.prefix_id = self._prefix_token()
        self.truncated = 0  # requests whose context lost tokens to fit max_len
        self.truncated_tokens = 0  # context tokens cut in all
        self._engines: dict[int, Any] = {}

    def _prefix_token(self) -> int:
        """BOS (the harness's prefix token for an empty context), else EOS."""
        bos = getattr(self.tokenizer, "bos_id", None)
        return bos if bos is not None else self.tokenizer.eos_id

    # ---- tokenisation ----

    def encode_pair(self, context: str, continuation: str) -> TokenRequest:
        """The harness's split of (context, continuation) into tokens (module docstring)."""
        if not continuation:
            raise ValueError(
                f"empty continuation after context {context[-40:]!r}: nothing to score"
            )
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        context_ids = self.tokenizer.encode(context) if context else []
        whole = self.tokenizer.encode(context + continuation)
        continuation_ids = whole[len(context_ids) :]
        if not continuation_ids:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        prefix = [self.prefix_id] if self.add_bos or not context_ids else []
        return TokenRequest(tuple(prefix + context_ids), tuple(continuation_ids))

    def fit(self, request: TokenRequest) -> TokenRequest:
        """`request` with its oldest context tokens cut so that it makes <= max_len inputs."""
        n = len(request.continuation)
        if n > self.max_len:
            raise ValueError(
                f"continuation of {n} tokens is longer than max_len={self.max_len}: "
                "it cannot be scored in one window"
            )
        bad = [t for t in request.context + request.continuation
               if not 0 <= t < self.cfg.vocab_size]  # fmt: skip
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside the model's vocabulary "
                f"[0, {self.cfg.vocab_size}): tokenizer and model do not match"
            )
        room = self.max_len + 1 - n
        cut = len(request.context) - room
        if cut <= 0:
            return request
        self.truncated += 1
        self.truncated_tokens += cut
        return TokenRequest(request.context[cut:], request.continuation)

    # ---- scoring ----

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], *, progress: bool = False
    ) -> list[LogLikelihood]:
        """log p(continuation | context) of each (context, continuation) pair."""
        token_requests = [self.encode_pair(c, x) for c, x in requests]
        return self.score_tokens(token_requests, progress=progress)

    def score_tokens(
        self, requests: Sequence[TokenRequest], *, progress: bool = False
    ) -> list[LogLikelihood]:
        """The fast path: length-sorted, bucketed, fixed-size batches; results in order."""
        fitted = [self.fit(r) for r in requests]
        order = sorted(range(len(fitted)), key=lambda i: -self._n_inputs(fitted[i]))
        results: list[LogLikelihood | None] = [None] * len(fitted)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="loglikelihood", disable=not progress, unit="batch"):
            chunk = order[start : start + self.batch_size]
            for i, scored in zip(chunk, self._score_batch([fitted[i] for i in chunk]), strict=True):
                results[i] = scored
        return results  # type: ignore[return-value]

    @staticmethod
    def _n_inputs(request: TokenRequest) -> int:
        return len(request.context) + len(request.continuation) - 1

    def _score_batch(self, batch: Sequence[TokenRequest]) -> list[LogLikelihood]:
        L = bucket_length(max(map(self._n_inputs, batch)), self.max_len)
        C = bucket_length(max(len(r.continuation) for r in batch), L)
        inputs = np.full((self.batch_size, L), -1, np.int32)
        start = np.zeros((self.batch_size,), np.int32)
        targets = np.zeros((self.batch_size, C), np.int32)
        mask = np.zeros((self.batch_size, C), bool)
        for b, r in enumerate(batch):
            tokens = r.context + r.continuation
            n, m = len(tokens) - 1, len(r.continuation)
            inputs[b, :n], start[b] = tokens[:-1], n - m
            targets[b, :m], mask[b, :m] = r.continuation, True
        logp_BC, greedy_B = _score_rows(self.cfg, self.params, inputs, start, targets, mask)
        logp_BC, greedy_B = np.asarray(logp_BC), np.asarray(greedy_B)
        return [
            LogLikelihood(
                float(logp_BC[b].sum(dtype=np.float64)), bool(greedy_B[b]), len(r.continuation)
            )
            for b, r in enumerate(batch)
        ]

    def rolling_windows(self, text: str) -> list[TokenRequest]:
        """The disjoint windows (context, predicted tokens) of `text` (module docstring)."""
        tokens = self.tokenizer.encode(text)
        if not tokens:
            raise ValueError("loglikelihood_rolling of an empty text: nothing to score")
        first = min(self.max_len, len(tokens))
        windows = [TokenRequest((self.prefix_id,), tuple(tokens[:first]))]
        done = first
        while done < len(tokens):
            n = min(len(tokens) - done, self.max_len)
            end = done + n
            context = tokens[end - self.max_len - 1 : end - n]
            windows.append(TokenRequest(tuple(context), tuple(tokens[done:end])))
            done = end
        return windows

    def loglikelihood_rolling(
        self, texts: Sequence[str], *, progress: bool = False
    ) -> list[LogLikelihood]:
        """The log-likelihood of each whole text, summed over its rolling windows."""
        windows = [self.rolling_windows(t) for t in texts]
        flat = [w for ws in windows for w in ws]
        scored = iter(self.score_tokens(flat, progress=progress))
        out = []
        for ws in windows:
            parts = [next(scored) for _ in ws]
            out.append(
                LogLikelihood(
                    sum(p.logprob for p in parts),
                    all(p.is_greedy for p in parts),
                    sum(p.n_tokens for p in parts),
                )
            )
        return out

    # ---- generation ----

    def generate_until(
        self, requests: Sequence[tuple[str, Sequence[str], int]], *, progress: bool = False
    ) -> list[str]:
        """Greedy continuations of each (prompt, stop strings, max new tokens): the text ends
        before the first stop string, at EOS, or after max_new tokens. A prompt too long for
        max_len - max_new keeps its last tokens (counted in `truncated`). Requests with the
        same stops and max_new share batches."""
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, (_, stops, max_new) in enumerate(requests):
            groups.setdefault((tuple(stops), int(max_new)), []).append(i)
        prompts = [self._prompt_ids(p, n) for p, _, n in requests]
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate", disable=not progress, unit="req")
        for (stops, max_new), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                texts = self._generate([prompts[i] for i in chunk], stops, max_new)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out

    def _prompt_ids(self, prompt: str, max_new: int) -> list[int]:
        if not 1 <= max_new < self.max_len:
            raise ValueError(f"max_new={max_new} must be in [1, max_len={self.max_len})")
        ids = ([self.prefix_id] if self.add_bos else []) + self.tokenizer.encode(prompt)
        ids = ids or [self.prefix_id]
        cut = len(ids) - (self.max_len - max_new)
        if cut > 0:
            self.truncated += 1
            self.truncated_tokens += cut
            ids = ids[cut:]
        return ids

    def _generate(
        self, prompts: list[list[int]], stops: tuple[str, ...], max_new: int
    ) -> list[str]:
        engine = self._engine(bucket(max(map(len, prompts)) + max_new, 128, self.max_len))
        eos = self.tokenizer.eos_id
        stop = StopCriteria(max_new, (eos,) if eos is not None else (), stops)
        rows = prompts + [[self.prefix_id]] * (self.batch_size - len(prompts))  # one shape
        texts = [c.text for c in engine.generate(rows, GREEDY, stop)][: len(prompts)]
        for s in stops:  # the harness's cut, `text.split(stop)[0]`, for every stop string
            texts = [t.split(s)[0] for t in texts]
        return texts

    def _engine(self, max_len: int) -> Any:
        """One generation engine per cache length (a cache of max_len slots per row)."""
        if max_len not in self._engines:
            self._engines[max_len] = Engine(self.cfg, self.params, self.tokenizer, max_len=max_len)
        return self._engines[max_len]

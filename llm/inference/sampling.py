"""Decoding strategies as per-row logits processors, so one compiled step serves a batch of
requests that each chose their own settings.

Order, each stage seeing the distribution left (and renormalised) by the ones before it:
1. repetition penalty (Keskar et al., 2019, CTRL, arXiv:1909.05858): a logit of a token seen
   in the prompt or output is divided by the penalty if positive, multiplied if negative;
2. frequency and presence penalties (OpenAI API): logit -= count * frequency + [count > 0] *
   presence, counting generated tokens only;
3. watermark bias (Kirchenbauer et al., 2023; `watermark.py`), when enabled for the row;
4. greedy rows (temperature 0) take the argmax here; others divide by the temperature;
5. top-k (Fan et al., 2018): the k most likely tokens;
6. top-p / nucleus (Holtzman et al., 2020, arXiv:1904.09751): the smallest most-likely set
   whose mass reaches p;
7. min-p (Nguyen et al., 2024, arXiv:2407.01082): tokens at least min_p times as likely as the
   most likely one;
8. typical sampling (Meister et al., 2023, arXiv:2202.00666): tokens ordered by how far their
   surprisal is from the entropy, the smallest such set whose mass reaches typical_p.
Ties are broken by rank (a stable sort), so the kept set always has the stated size.

Randomness is a key per row derived from the request's seed and the number of tokens it has
generated, so a request's samples do not depend on when it joined a batch or who else is in it.
`truncated_probs_reference` is the plain NumPy statement of the same rules for the tests.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llm.inference.watermark import green_mask
from llm.typing import Array

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; the defaults sample from the plain distribution."""

    temperature: float = 1.0  # softmax temperature; 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 = off
    min_p: float = 0.0  # keep tokens with p >= min_p * p_max, in [0, 1]; 0 = off
    typical_p: float = 1.0  # locally typical mass in (0, 1]; 1 = off
    repetition_penalty: float = 1.0  # CTRL penalty (> 0) on tokens of prompt and output; 1 = off
    frequency_penalty: float = 0.0  # subtracted per previous occurrence in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurred in the output
    watermark_delta: float = 0.0  # green-list logit bias (watermark.py); 0 = off
    seed: int = 0  # randomness of this request (with the token index)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SamplingError(problems)

    def problems(self) -> list[tuple[str, str]]:
        """(field, "field=value must be ...") for every impossible setting; none is clamped."""
        out = [(f.name, f"{f.name}={getattr(self, f.name)} must be finite")
               for f in dataclasses.fields(self)
               if f.type == "float" and not math.isfinite(getattr(self, f.name))]  # fmt: skip
        rules = (
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, ">= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("typical_p", 0 < self.typical_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 = off)"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
        )
        named = {name for name, _ in out}
        out += [(name, f"{name}={getattr(self, name)} must be {rule}")
                for name, ok, rule in rules if not ok and name not in named]  # fmt: skip
        return out


class SamplingError(ValueError):
    """Impossible sampling settings; `.problems` pairs each field with what is wrong."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(text for _, text in problems))
        self.problems = problems


GREEDY = SamplingParams(temperature=0.0)


@struct.dataclass
class SamplerState:
    """Per-row sampling settings and history, kept on device beside the KV cache."""

    temperature_B: Array
    top_k_B: Array
    top_p_B: Array
    min_p_B: Array
    typical_p_B: Array
    repetition_B: Array
    frequency_B: Array
    presence_B: Array
    watermark_B: Array
    seed_B: Array  # uint32
    steps_B: Array  # tokens generated so far (the second half of each draw's key)
    prompt_mask_BV: Array  # bool: token occurs in the prompt
    counts_BV: Array  # int32: occurrences in the output
    last_B: Array  # the latest token (the watermark's context)


def make_sampler_state(
    params: list[SamplingParams], prompts: list[list[int]], vocab_size: int
) -> SamplerState:
    """Host-side construction for a group of new rows (one per request)."""

    def col(name, dtype):
        return jnp.asarray(np.array([getattr(p, name) for p in params], dtype))

    mask = np.zeros((len(prompts), vocab_size), bool)
    for row, ids in enumerate(prompts):
        mask[row, np.asarray(ids, np.int64)] = True
    return SamplerState(
        temperature_B=col("temperature", np.float32),
        top_k_B=col("top_k", np.int32),
        top_p_B=col("top_p", np.float32),
        min_p_B=col("min_p", np.float32),
        typical_p_B=col("typical_p", np.float32),
        repetition_B=col("repetition_penalty", np.float32),
        frequency_B=col("frequency_penalty", np.float32),
        presence_B=col("presence_penalty", np.float32),
        watermark_B=col("watermark_delta", np.float32),
        seed_B=col("seed", np.uint32),
        steps_B=jnp.zeros((len(params),), jnp.int32),
        prompt_mask_BV=jnp.asarray(mask),
        counts_BV=jnp.zeros((len(params), vocab_size), jnp.int32),
        last_B=jnp.asarray(np.array([ids[-1] for ids in prompts], np.int32)),
    )


def penalize(logits_BV: Array, s: SamplerState) -> Array:
    """Stages 1-3: repetition, frequency/presence penalties and the watermark bias."""
    l = logits_BV.astype(jnp.float32)
    seen_BV = s.prompt_mask_BV | (s.counts_BV > 0)
    r_B1 = s.repetition_B[:, None]
    l = jnp.where(seen_BV, jnp.where(l > 0, l / r_B1, l * r_B1), l)
    counts = s.counts_BV.astype(jnp.float32)
    l = l - counts * s.frequency_B[:, None] - (counts > 0) * s.presence_B[:, None]
    return jax.lax.cond(
        jnp.any(s.watermark_B != 0),
        lambda l: l + s.watermark_B[:, None] * green_mask(s.last_B, l.shape[-1]),
        lambda l: l,
        l,
    )


def truncate(logits_BV: Array, s: SamplerState) -> Array:
    """Stages 5-8 on temperature-scaled logits: removed tokens get -inf."""
    B, V = logits_BV.shape
    order_BV = jnp.argsort(-logits_BV, axis=-1, stable=True)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    rank_V = jnp.arange(V)
    k_B1 = jnp.where(s.top_k_B > 0, s.top_k_B, V)[:, None]
    keep_BV = rank_V[None] < k_B1
    probs_BV = _renormalised(sorted_BV, keep_BV)
    keep_BV &= (jnp.cumsum(probs_BV, -1) - probs_BV) < s.top_p_B[:, None]
    probs_BV = _renormalised(sorted_BV, keep_BV)
    keep_BV &= probs_BV >= s.min_p_B[:, None] * probs_BV[:, :1]
    keep_BV = jax.lax.cond(
        jnp.any(s.typical_p_B < 1.0),
        lambda: keep_BV & _typical(sorted_BV, keep_BV, s.typical_p_B),
        lambda: keep_BV,
    )
    rows_B1 = jnp.arange(B)[:, None]
    keep_unsorted = jnp.zeros((B, V), bool).at[rows_B1, order_BV].set(keep_BV)
    return jnp.where(keep_unsorted, logits_BV, NEG_INF)


def _renormalised(sorted_BV: Array, keep_BV: Array) -> Array:
    return jax.nn.softmax(jnp.where(keep_BV, sorted_BV, NEG_INF), axis=-1)


def _typical(sorted_BV: Array, keep_BV: Array, typical_p_B: Array) -> Array:
    """Keep mask (in the given sorted order) of the locally typical set."""
    logp_BV = jax.nn.log_softmax(jnp.where(keep_BV, sorted_BV, NEG_INF), axis=-1)
    p_BV = jnp.exp(logp_BV)
    entropy_B1 = -jnp.sum(jnp.where(keep_BV, p_BV * logp_BV, 0.0), -1, keepdims=True)
    score_BV = jnp.where(keep_BV, jnp.abs(-logp_BV - entropy_B1), jnp.inf)
    order_BV = jnp.argsort(score_BV, axis=-1, stable=True)
    p_sorted = jnp.take_along_axis(p_BV, order_BV, axis=-1)
    keep_sorted = (jnp.cumsum(p_sorted, -1) - p_sorted) < typical_p_B[:, None]
    keep_sorted &= jnp.take_along_axis(keep_BV, order_BV, axis=-1)
    rows_B1 = jnp.arange(keep_BV.shape[0])[:, None]
    return jnp.zeros_like(keep_BV).at[rows_B1, order_BV].set(keep_sorted)


def processed_logits(logits_BV: Array, s: SamplerState) -> Array:
    """Penalised, temperature-scaled, truncated logits of the sampling rows (greedy rows:
    penalised only). Softmax of a row is the distribution its token is drawn from."""
    l = penalize(logits_BV, s)
    t_B1 = s.temperature_B[:, None]
    scaled = l / jnp.where(t_B1 > 0, t_B1, 1.0)
    truncating_B = (s.top_k_B > 0) | (s.top_p_B < 1) | (s.min_p_B > 0) | (s.typical_p_B < 1)
    # the sorts cost more than a small model's step: skip them when no row truncates
    scaled = jax.lax.cond(
        jnp.any(truncating_B & (s.temperature_B > 0)), truncate, lambda x, _: x, scaled, s
    )
    return jnp.where(t_B1 > 0, scaled, l)


def row_keys(s: SamplerState) -> Array:
    """One key per row from (seed, tokens generated so far)."""
    return jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step))(
        s.seed_B, s.steps_B
    )


def sample(logits_BV: Array, s: SamplerState) -> Array:
    """The next token of every row: argmax for greedy rows, a draw for the others."""
    return sample_with_logprobs(logits_BV, s)[0]


def sample_with_logprobs(logits_BV: Array, s: SamplerState) -> tuple[Array, Array]:
    """`sample`, plus each drawn token's float32 log-probability under the distribution it was
    drawn from: log_softmax of `processed_logits` (penalties, temperature and truncation
    included). With no penalty or truncation (top_k=0, top_p=1: what RL rollouts use) that is
    exactly log_softmax(logits / T), the policy's own distribution, which PPO's and GRPO's
    ratios need. Greedy rows report the log-probability of the argmax at temperature 1."""
    l = processed_logits(logits_BV, s)
    greedy_B = jnp.argmax(l, -1).astype(jnp.int32)
    # Gumbel noise over the vocabulary costs a small model's step: draw only if a row samples
    tokens_B = jax.lax.cond(
        jnp.any(s.temperature_B > 0),
        lambda: jnp.where(
            s.temperature_B > 0, jax.vmap(jax.random.categorical)(row_keys(s), l), greedy_B
        ).astype(jnp.int32),
        lambda: greedy_B,
    )
    logp_BV = jax.nn.log_softmax(l, axis=-1)
    return tokens_B, jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]


def record(s: SamplerState, tokens_B: Array, active_B: Array) -> SamplerState:
    """The state after the active rows emitted `tokens_B`."""
    _B, V = s.counts_BV.shape
    onehot_BV = (jnp.arange(V)[None] == tokens_B[:, None]) & active_B[:, None]
    return s.replace(
        counts_BV=s.counts_BV + onehot_BV.astype(jnp.int32),
        steps_B=s.steps_B + active_B.astype(jnp.int32),
        last_B=jnp.where(active_B, tokens_B, s.last_B),
    )


def truncated_probs_reference(
    logits_V: np.ndarray,
    p: SamplingParams,
    prompt_ids: list[int] = (),
    output_ids: list[int] = (),
) -> np.ndarray:
    """The distribution `sample` draws from, one row, in plain NumPy (float64); no watermark."""
    l = np.asarray(logits_V, np.float64).copy()
    seen = set(prompt_ids) | set(output_ids)
    for t in seen:
        l[t] = l[t] / p.repetition_penalty if l[t] > 0 else l[t] * p.repetition_penalty
    for t in set(output_ids):
        l[t] -= list(output_ids).count(t) * p.frequency_penalty + p.presence_penalty
    if p.temperature == 0:
        out = np.zeros_like(l)
        out[int(np.argmax(l))] = 1.0
        return out
    l /= p.temperature
    keep = np.argsort(-l, kind="stable")  # kept token ids, most likely first
    if p.top_k > 0:
        keep = keep[: p.top_k]
    keep = keep[: _mass_cut(_softmax(l[keep]), p.top_p)]
    probs = _softmax(l[keep])
    keep = keep[probs >= p.min_p * probs.max()]
    if p.typical_p < 1:
        probs = _softmax(l[keep])
        entropy = -np.sum(probs * np.log(probs))
        order = np.argsort(np.abs(-np.log(probs) - entropy), kind="stable")
        keep = keep[order][: _mass_cut(probs[order], p.typical_p)]
    out = np.zeros_like(l)
    out[keep] = _softmax(l[keep])
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _mass_cut(probs: np.ndarray, mass: float) -> int:
    """How many leading entries to keep: those whose preceding mass is below `mass`."""
    before = np.cumsum(probs) - probs
    return int(np.sum(before < mass))

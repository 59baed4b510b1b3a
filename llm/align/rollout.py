"""Rollouts through the inference engine: groups of samples per prompt -> training rows.

    samples = sample_groups(engine, prompts, group_size=4, max_new_tokens=32,
                            temperature=1.0, top_k=0, seeds=row_seeds(seed, iteration, N))
    rows, sample_logp = rollout_rows(prompts, samples, group_size, seq_len, pad_id)

There is one sampler in the codebase (`llm.inference.engine.Engine`); RL uses it as serving
does, with the policy's current weights (`model_params(params, frozen)`, LoRA merged). Each
sampled token comes back with its log-probability under the distribution it was drawn from
(`sampling.sample_with_logprobs`); with top_k=0 (and no penalties) that is
log_softmax(logits / T), so the engine's numbers equal `llm.train.logprobs.token_logprobs(...,
temperature=T)` of the training forward on the same rows, to float tolerance (the test:
tests/inference/test_logprobs.py).

A completion ends at the chat template's end of turn (`llm.inference.loading.chat_stops`: a
stop id, or the marker's text for the byte tokenizer) or at `max_new_tokens`. Rows are the
SFT row layout (llm/data/sft.py): prompt + completion right-padded to `seq_len`, positions
from 0, segment id 1 on real tokens, `targets[t] = inputs[t + 1]`, and `loss_mask` on every
sampled token, the end-of-turn tokens included when they were sampled (the policy is
rewarded for stopping as SFT teaches it to stop). A prompt that leaves no room for
`max_new_tokens` in `seq_len` is an error before anything is generated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from llm.data.prompts import Prompt
from llm.data.sft import padding_row
from llm.inference.engine import Engine, StopCriteria
from llm.inference.loading import chat_stops
from llm.inference.sampling import GREEDY, SamplingParams


@dataclasses.dataclass(frozen=True)
class Sample:
    """One completion: every sampled token (end of turn included), their log-probs, text."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str  # what rewards read: the completion without its end-of-turn marker
    finish_reason: str  # "stop" (end of turn) or "length"


def row_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """One sampling seed per rollout row, a pure function of (train.seed, iteration)."""
    return [int(s) for s in np.random.default_rng([seed, iteration]).integers(0, 2**32, n)]


def check_room(prompts: Sequence[Prompt], max_new_tokens: int, seq_len: int) -> None:
    """Every prompt plus `max_new_tokens` must fit a training row of `seq_len` tokens."""
    worst = max(prompts, key=lambda p: len(p.ids))
    if len(worst.ids) + max_new_tokens > seq_len:
        raise ValueError(
            f"{worst.origin}: the prompt has {len(worst.ids)} tokens; with rl.max_new_tokens="
            f"{max_new_tokens} a rollout needs {len(worst.ids) + max_new_tokens} > "
            f"train.seq_len={seq_len}; raise train.seq_len or shorten the prompts"
        )


def sample_groups(
    engine: Engine,
    prompts: Sequence[Prompt],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    seeds: Sequence[int] | None = None,
) -> list[Sample]:
    """`group_size` completions of each prompt (rows of a prompt contiguous), sampled in one
    engine batch; temperature 0 decodes greedily (evaluation), and `seeds` is then unused."""
    if engine.tokenizer is None:
        raise ValueError("rollouts need an Engine with a tokenizer (rewards read text)")
    n = len(prompts) * group_size
    if temperature > 0:
        if seeds is None or len(seeds) != n:
            raise ValueError(f"sampling {n} rows needs {n} seeds")
        params = [SamplingParams(temperature=temperature, top_k=top_k, seed=s) for s in seeds]
    else:
        params = [GREEDY] * n
    stop_ids, stop_strings = chat_stops(engine.tokenizer)
    stop = StopCriteria(max_new_tokens, stop_ids, stop_strings)
    ids = [list(p.ids) for p in prompts for _ in range(group_size)]
    tokens: list[list[int]] = [[] for _ in ids]
    logps: list[list[float]] = [[] for _ in ids]
    texts: list[list[str]] = [[] for _ in ids]
    reasons = [""] * n
    for event in engine.stream(ids, params, stop):
        if event.token is not None:
            tokens[event.index].append(event.token)
            logps[event.index].append(event.logprob)
        texts[event.index].append(event.text)
        reasons[event.index] = event.finish_reason or reasons[event.index]
    return [
        Sample(tuple(t), tuple(lp), "".join(x), r)
        for t, lp, x, r in zip(tokens, logps, texts, reasons, strict=True)
    ]


def rollout_rows(
    prompts: Sequence[Prompt],
    samples: Sequence[Sample],
    group_size: int,
    seq_len: int,
    pad_id: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(rows [N, L], sample_logp [N, L]): prompt + completion per row, the completion's tokens
    on loss_mask and their engine log-probs at the same positions (0 elsewhere)."""
    if len(samples) != len(prompts) * group_size:
        raise ValueError(f"{len(samples)} samples for {len(prompts)} prompts x {group_size}")
    out = [padding_row(seq_len, pad_id) for _ in samples]
    logp_NL = np.zeros((len(samples), seq_len), np.float32)
    for i, sample in enumerate(samples):
        prompt = prompts[i // group_size].ids
        ids = np.asarray([*prompt, *sample.token_ids], np.int32)
        P, n = len(prompt), len(ids)
        if n > seq_len:
            raise ValueError(f"rollout {i} has {n} tokens > train.seq_len={seq_len}")
        row = out[i]
        row["inputs"][:n] = ids
        row["segment_ids"][:n] = 1
        row["positions"][:n] = np.arange(n)
        row["targets"][: n - 1] = ids[1:]
        row["loss_mask"][P - 1 : n - 1] = 1.0  # targets[P - 1 ..] are the sampled tokens
        logp_NL[i, P - 1 : n - 1] = sample.logprobs
    rows = {k: np.stack([r[k] for r in out]) for k in out[0]}
    return rows, logp_NL

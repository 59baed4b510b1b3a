"""Best-of-n sampling and rejection-sampling data: n samples per prompt, keep the best.

    picks = best_of_n(engine, prompts, scorer=RewardModel.load("runs/rm"), n=8)
    picks[0].best, picks[0].scores          # the top-scored completion, all n scores
    write_sft(picks, "out/sft.jsonl")       # (prompt, best): rejection-sampling fine-tuning
    write_preferences(picks, "out/pairs.jsonl")   # (prompt, best, worst): DPO pairs

Best-of-n (Nakano et al. 2021, WebGPT, arXiv:2112.09332, sec. 3.3) draws n completions from
the policy and returns the one a reward model scores highest; it buys reward with inference
compute and no training. Rejection sampling (Touvron et al. 2023, Llama 2, arXiv:2307.09288,
sec. 3.2.3) fine-tunes on those picks; the (best, worst) pairs feed the DPO family.

* Sampling runs on the inference engine (`Engine.generate`, one sampler in the codebase),
  prompts rendered with the chat template and a generation prompt, stopped at the end of the
  assistant turn, as `llm generate --chat` does (llm/commands/generate.py).
* Determinism: sample j of prompt i is drawn with seed `seed + i * MAX_N + j`, which does
  not depend on n or on the batch it ran in (the engine's randomness is per row), so the
  first sample of a best-of-8 run is the sample of a best-of-1 run, and a run is repeatable.
* Any scorer works: a `RewardModel` or a programmatic reward, any callable
  `(prompts, completions) -> [N] scores`. Ties go to the earliest sample (np.argmax).
* A prompt whose n samples all score alike gives no preference pair; such prompts are
  counted in `PreferenceReport.skipped_ties`, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.inference.engine import Engine, StopCriteria, bucket
from llm.inference.loading import chat_stops
from llm.inference.sampling import SamplingParams
from llm.tokenizers.chat import apply_chat

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]
RANDOM = SamplingParams()  # plain sampling at temperature 1, seed 0
MAX_N = 1024  # seeds of one prompt's samples: seed + i * MAX_N + j, j < MAX_N


@dataclasses.dataclass(frozen=True)
class Pick:
    """One prompt's n samples, their scores and which one won."""

    prompt: str
    samples: tuple[str, ...]
    scores: np.ndarray  # [n] float32
    finish: tuple[str, ...]  # each sample's finish reason ("stop" | "length")

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def worst_index(self) -> int:
        return int(np.argmin(self.scores))

    @property
    def best(self) -> str:
        return self.samples[self.best_index]


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampling seed of sample j of prompt i (independent of n: module docstring)."""
    return (seed + prompt_index * MAX_N + sample_index) % 2**32


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt as one user turn with the generation prompt (the chat template's)."""
    return apply_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def engine_for(model_cfg: Any, params: Any, tokenizer: Any, prompts: Sequence[str],
               max_new_tokens: int) -> Engine:  # fmt: skip
    """An engine whose KV cache holds the longest prompt plus `max_new_tokens`, not the
    model's whole context: the cache is [rows, max_len] per layer, and SmolLM2's 8,192
    positions for 32 rows would take 12 GB."""
    longest = max(len(chat_prompt_ids(tokenizer, p)) for p in prompts)
    need = bucket(longest + max_new_tokens, 16, 1 << 30)
    return Engine(model_cfg, params, tokenizer, max_len=min(need, model_cfg.max_seq_len))


def sample(
    engine: Engine,
    prompts: Sequence[str],
    n: int,
    *,
    params: SamplingParams = RANDOM,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[Any]]:
    """n engine `Completion`s of each prompt (chat template, stopped at the end of turn)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n={n} must be in [1, {MAX_N}]")
    tok = engine.tokenizer
    stop_ids, stop_strings = chat_stops(tok)
    stop = StopCriteria(max_new_tokens, stop_ids, stop_strings)
    jobs = []  # (prompt index, sample index, ids)
    for i, prompt in enumerate(prompts):
        ids = chat_prompt_ids(tok, prompt)
        if len(ids) + max_new_tokens > engine.max_len:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it "
                f"exceeds the model's context of {engine.max_len}: shorten it or lower the limit"
            )
        jobs += [(i, j, ids) for j in range(n)]
    out: list[list[Any]] = [[None] * n for _ in prompts]
    bar = _bar(len(jobs), progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        seeded = [dataclasses.replace(params, seed=sample_seed(params.seed, i, j))
                  for i, j, _ in chunk]  # fmt: skip
        done = engine.generate([ids for *_, ids in chunk], seeded, stop)
        for (i, j, _), completion in zip(chunk, done, strict=True):
            out[i][j] = completion
        bar.update(len(chunk))
    bar.close()
    return out


def best_of_n(
    engine: Engine,
    prompts: Sequence[str],
    scorer: Scorer,
    n: int,
    **sampling: Any,
) -> list[Pick]:
    """Each prompt's n samples scored by `scorer`; `sampling` goes to `sample`."""
    completions = sample(engine, prompts, n, **sampling)
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat_texts = [c.text for row in completions for c in row]
    scores = np.asarray(scorer(flat_prompts, flat_texts), np.float32)
    if scores.shape != (len(flat_texts),):
        raise ValueError(f"the scorer returned shape {scores.shape}, not ({len(flat_texts)},)")
    picks = []
    for k, (prompt, row) in enumerate(zip(prompts, completions, strict=True)):
        texts, finish = tuple(c.text for c in row), tuple(c.finish_reason for c in row)
        picks.append(Pick(prompt, texts, scores[k * n : (k + 1) * n], finish))
    return picks


@dataclasses.dataclass(frozen=True)
class PreferenceReport:
    """What `write_preferences` wrote and what it could not."""

    pairs: int  # (prompt, best, worst) records written
    skipped_ties: int  # prompts whose samples all scored alike (or were identical texts)


def write_sft(picks: Sequence[Pick], path: str | Path) -> int:
    """(prompt, best) as chat JSONL for rejection-sampling fine-tuning; returns the count."""
    with Path(path).open("w") as f:
        for p in picks:
            messages = [{"role": "user", "content": p.prompt},
                        {"role": "assistant", "content": p.best}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return len(picks)


def write_preferences(picks: Sequence[Pick], path: str | Path) -> PreferenceReport:
    """(prompt, best as chosen, worst as rejected) JSONL for DPO; ties are counted, not paired."""
    pairs = ties = 0
    with Path(path).open("w") as f:
        for p in picks:
            chosen, rejected = p.samples[p.best_index], p.samples[p.worst_index]
            if p.scores[p.best_index] == p.scores[p.worst_index] or chosen == rejected:
                ties += 1
                continue
            record = {"prompt": p.prompt, "chosen": chosen, "rejected": rejected,
                      "score_chosen": float(p.scores[p.best_index]),
                      "score_rejected": float(p.scores[p.worst_index])}  # fmt: skip
            f.write(json.dumps(record) + "\n")
            pairs += 1
    return PreferenceReport(pairs, ties)


def summary(picks: Sequence[Pick]) -> dict[str, float]:
    """Mean score of the best sample, of the first sample (best-of-1) and of all samples."""
    scores = np.stack([p.scores for p in picks])
    return {
        "prompts": len(picks),
        "n": scores.shape[1],
        "mean_best": float(scores.max(axis=1).mean()),
        "mean_first": float(scores[:, 0].mean()),
        "mean_all": float(scores.mean()),
    }


class _NoBar:
    def update(self, k: int) -> None:
        del k

    def close(self) -> None:
        pass


def _bar(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", file=sys.stderr)

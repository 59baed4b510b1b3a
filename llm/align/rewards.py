"""Rewards of RL rollouts: named functions of (prompts, completions), summed with weights.

    rewards = make_rewards(cfg.rl)              # rl.rewards, rl.reward_weights
    total_N, per_name = rewards(prompts, texts)  # [N] float32, {name: [N]}

Every reward maps a batch of (prompt, completion text) to one float per completion; the RL
loop adds them with `rl.reward_weights` (all 1 when empty) and logs each one. Programmatic
rewards are verifiable offline (DeepSeekMath / GRPO, arXiv:2402.03300, trains on such
rule-based rewards):

  * "arithmetic": 1 when the number the completion states as its answer equals the prompt
    record's "answer" numerically, else 0; a prompt without an answer is an error. The
    stated answer is the first number ("-12", "3.5") after the completion's last "=" when
    it has one (instruction models echo the question: "12 + 7 = 19"), else its first number.
  * "format": 1 when the whole completion, surrounding whitespace stripped, matches
    `rl.format_regex` (default `-?\\d+\\.`: a bare answer like "19."), else 0.
  * "model": the score of a trained reward model (`rl.reward_model`, a reward-model run
    directory; llm/align/reward_model.py), loaded when named.

There is no length reward: length is what GRPO's aggregation (`loss.aggregation`) is about,
and a reward for it would be gamed at once. A new reward is `register_reward(name, builder)`
with `builder(rl_cfg) -> fn(prompts, completions) -> np.ndarray [N]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm.align.reward_model import RewardModel
from llm.data.prompts import Prompt

RewardFn = Callable[[Sequence[Prompt], Sequence[str]], np.ndarray]
REWARDS: dict[str, Callable[[Any], RewardFn]] = {}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def register_reward(name: str, builder: Callable[[Any], RewardFn]) -> None:
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = builder


def first_number(text: str) -> float | None:
    """The first number written in `text` (an optional minus, digits, a decimal part)."""
    match = NUMBER.search(text)
    return None if match is None else float(match.group())


def stated_answer(text: str) -> float | None:
    """The first number after the last "=", or the first number when there is no "="."""
    return first_number(text.rsplit("=", 1)[-1])


def arithmetic(prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
    """1 where the completion's stated answer equals the prompt's answer, else 0."""
    out = np.zeros(len(completions), np.float32)
    for i, (prompt, text) in enumerate(zip(prompts, completions, strict=True)):
        if prompt.answer is None:
            raise ValueError(
                f"{prompt.origin}: reward 'arithmetic' needs an 'answer' in every prompt record"
            )
        want = first_number(prompt.answer)
        if want is None:
            raise ValueError(f"{prompt.origin}: answer {prompt.answer!r} holds no number")
        got = stated_answer(text)
        out[i] = float(got is not None and got == want)
    return out


def format_reward(rl: Any) -> RewardFn:
    pattern = re.compile(rl.format_regex)

    def score(prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
        del prompts
        hits = [pattern.fullmatch(text.strip()) is not None for text in completions]
        return np.asarray(hits, np.float32)

    return score


def reward_model(rl: Any) -> RewardFn:
    if rl.reward_model is None:
        raise ValueError("rl.rewards names 'model' but rl.reward_model (a run directory) is unset")

    model = RewardModel.load(rl.reward_model)

    def score(prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
        scores = np.asarray(
            model([list(p.messages) for p in prompts], list(completions)), np.float32
        )
        if scores.shape != (len(completions),):
            raise ValueError(f"reward model {rl.reward_model} returned shape {scores.shape} "
                             f"for {len(completions)} completions")  # fmt: skip
        return scores

    return score


register_reward("arithmetic", lambda rl: arithmetic)
register_reward("format", format_reward)
register_reward("model", reward_model)


class Rewards:
    """The weighted sum of the named rewards, with each one's values kept for logging."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], fns: Sequence[RewardFn]):
        self.names, self.weights, self.fns = tuple(names), tuple(weights), tuple(fns)

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        each = {
            name: fn(prompts, completions) for name, fn in zip(self.names, self.fns, strict=True)
        }
        total = np.zeros(len(completions), np.float32)
        for name, w in zip(self.names, self.weights, strict=True):
            total += np.float32(w) * each[name]
        return total, each


def make_rewards(rl: Any) -> Rewards:
    """The rewards of the `rl:` section; unknown names and an unused reward model raise."""
    unknown = [n for n in rl.rewards if n not in REWARDS]
    if unknown:
        raise ValueError(f"rl.rewards: {unknown} not registered (have {sorted(REWARDS)})")
    if len(set(rl.rewards)) != len(rl.rewards):
        raise ValueError(f"rl.rewards names a reward twice: {list(rl.rewards)}")
    if rl.reward_model is not None and "model" not in rl.rewards:
        raise ValueError(
            f"rl.reward_model={rl.reward_model!r} is set but rl.rewards {list(rl.rewards)} "
            "does not name 'model', so it would never score"
        )
    weights = rl.reward_weights or (1.0,) * len(rl.rewards)
    return Rewards(rl.rewards, weights, [REWARDS[n](rl) for n in rl.rewards])

"""Alignment configs: the preference and RL losses (`loss.name`) and the `rl:` section.

Preference losses read pairs (`data.format=preference`, llm/data/preference.py); KTO reads
unpaired completions with a desirable/undesirable label. PPO and GRPO train on rollouts the
RL loop generates each iteration from prompts (`data.format=prompts`), scored by the rewards
of `rl.rewards`. Each loss's formula and paper: llm/train/losses/<name>.py, docs/alignment.md.
"""

from __future__ import annotations

import re
from typing import Literal

from llm.config.base import check, config_class


def _beta(beta: float) -> None:
    check(beta > 0, "beta", "must be positive (it scales the implicit reward)")


@config_class
class RewardLossConfig:
    """Reward model: a scalar head trained with the Bradley-Terry loss on preference pairs."""

    name: Literal["reward"] = "reward"  # the loss this section configures
    margin: float = 0.0  # floor of Llama 2's margin m: -log sigmoid(r_c - r_r - m), with
    # m = max(margin, the record's "margin" field), so a record without one gets margin
    center_coef: float = 0.0  # weight of (r_c + r_r)^2, which keeps rewards centred at 0

    def __post_init__(self) -> None:
        check(self.margin >= 0, "margin", "must be non-negative")
        check(self.center_coef >= 0, "center_coef", "must be non-negative")


@config_class
class DPOLossConfig:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * margin of policy/reference log-ratios)."""

    name: Literal["dpo"] = "dpo"  # the loss this section configures
    beta: float = 0.1  # strength of the KL constraint to the reference (higher: closer)

    def __post_init__(self) -> None:
        _beta(self.beta)


@config_class
class CDPOLossConfig:
    """Conservative DPO (Mitchell 2023): DPO with labels flipped with probability eps."""

    name: Literal["cdpo"] = "cdpo"  # the loss this section configures
    beta: float = 0.1  # strength of the KL constraint to the reference
    label_smoothing: float = 0.1  # eps: the assumed probability that a pair's label is wrong

    def __post_init__(self) -> None:
        _beta(self.beta)
        check(0.0 < self.label_smoothing < 0.5, "label_smoothing", "must be in (0, 0.5)")


@config_class
class IPOLossConfig:
    """IPO (Azar et al. 2023): squared distance of the log-ratio margin to 1 / (2 tau)."""

    name: Literal["ipo"] = "ipo"  # the loss this section configures
    beta: float = 0.1  # tau, the regularisation strength (the target margin is 1 / (2 tau))

    def __post_init__(self) -> None:
        _beta(self.beta)


@config_class
class SimPOLossConfig:
    """SimPO (Meng et al. 2024): reference-free, length-normalised log-probs, target margin."""

    name: Literal["simpo"] = "simpo"  # the loss this section configures
    beta: float = 2.0  # reward scale of the average log-probability
    gamma: float = 1.0  # target reward margin between chosen and rejected

    def __post_init__(self) -> None:
        _beta(self.beta)
        check(self.gamma >= 0, "gamma", "must be non-negative")


@config_class
class ORPOLossConfig:
    """ORPO (Hong et al. 2024): SFT loss on chosen plus lam * odds-ratio loss; no reference."""

    name: Literal["orpo"] = "orpo"  # the loss this section configures
    lam: float = 0.1  # weight of the odds-ratio term (the paper's lambda)

    def __post_init__(self) -> None:
        check(self.lam > 0, "lam", "must be positive")


@config_class
class KTOLossConfig:
    """KTO (Ethayarajh et al. 2024): unpaired desirable/undesirable completions."""

    name: Literal["kto"] = "kto"  # the loss this section configures
    beta: float = 0.1  # strength of the KL constraint to the reference
    desirable_weight: float = 1.0  # lambda_D, weight of desirable examples
    undesirable_weight: float = 1.0  # lambda_U, weight of undesirable examples

    def __post_init__(self) -> None:
        _beta(self.beta)
        check(self.desirable_weight > 0, "desirable_weight", "must be positive")
        check(self.undesirable_weight > 0, "undesirable_weight", "must be positive")


@config_class
class PPOLossConfig:
    """PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022): value head, GAE."""

    name: Literal["ppo"] = "ppo"  # the loss this section configures
    clip: float = 0.2  # epsilon of the clipped policy ratio
    value_clip: float = 0.2  # values move at most this far from the rollout's values
    value_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # weight of the entropy bonus
    gamma: float = 1.0  # discount of GAE
    lam: float = 0.95  # lambda of GAE
    kl_coef: float = 0.05  # initial coefficient of the per-token KL penalty in the reward
    kl_target: float | None = 6.0  # adaptive KL controller's target (nats/sequence); null = fixed
    kl_horizon: int = 10000  # adaptive KL controller's horizon (rollouts)
    whiten_advantages: bool = True  # normalise advantages over each iteration's tokens
    whiten_rewards: bool = False  # normalise scores before the KL penalty is added

    def __post_init__(self) -> None:
        check(0 < self.clip < 1, "clip", "must be in (0, 1)")
        check(self.value_clip > 0, "value_clip", "must be positive")
        check(self.value_coef >= 0, "value_coef", "must be non-negative")
        check(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        check(self.kl_coef >= 0, "kl_coef", "must be non-negative")
        check(self.kl_target is None or self.kl_target > 0, "kl_target", "positive or null")
        check(self.kl_horizon > 0, "kl_horizon", "must be positive")


GRPOAggregation = Literal["token_mean", "sequence_mean", "constant"]


@config_class
class GRPOLossConfig:
    """GRPO (Shao et al. 2024): group-normalised advantages, clipped objective, KL to the
    reference; Dr. GRPO and DAPO variants through `aggregation`, `scale_rewards`, `clip_high`."""

    name: Literal["grpo"] = "grpo"  # the loss this section configures
    clip_low: float = 0.2  # epsilon below 1 of the clipped ratio
    clip_high: float = 0.2  # epsilon above 1 (DAPO's clip-higher: 0.28)
    kl_coef: float = 0.04  # weight of the k3 KL estimate to the reference (0 = no reference)
    scale_rewards: bool = True  # divide by the group's std (Dr. GRPO: false)
    # token_mean: sum over all tokens / token count (DAPO); sequence_mean: mean over each
    # sequence, then over sequences (the GRPO paper); constant: sum / (rows * max_new_tokens)
    # (Dr. GRPO's unnormalised lengths)
    aggregation: GRPOAggregation = "sequence_mean"

    def __post_init__(self) -> None:
        check(0 < self.clip_low < 1, "clip_low", "must be in (0, 1)")
        check(self.clip_high > 0, "clip_high", "must be positive")
        check(self.kl_coef >= 0, "kl_coef", "must be non-negative")


@config_class
class RLConfig:
    """Rollouts of the PPO / GRPO loop (llm/align/rl.py): what is generated and scored.

    Each iteration samples `prompts` prompts, generates `group_size` completions of each
    with the inference engine, scores them with `rewards`, then takes `epochs` passes of
    `train.batch_size` rollouts per optimiser step over them; `train.steps` counts
    optimiser steps, so iterations = train.steps / steps per iteration.
    """

    prompts: int = 8  # prompts per iteration
    group_size: int = 4  # completions per prompt (GRPO's group; PPO usually 1)
    epochs: int = 1  # passes over each iteration's rollouts
    max_new_tokens: int = 32  # completion length limit
    temperature: float = 1.0  # sampling temperature of rollouts
    top_k: int = 0  # 0 = the full distribution (the log-probs PPO's ratio assumes)
    rewards: tuple[str, ...] = ("arithmetic",)  # reward functions (llm/align/rewards.py)
    reward_weights: tuple[float, ...] = ()  # one per reward; empty = all 1
    reward_model: str | None = None  # a reward-model run directory, scored as reward "model"
    # reward "format" (llm/align/rewards.py): 1 when the whole completion (surrounding
    # whitespace stripped) matches this regex; the default is an answer like "-12."
    format_regex: str = r"-?\d+\."
    eval_prompts: int = 64  # held-out prompts scored (greedy) at each evaluation

    def __post_init__(self) -> None:
        for field in ("prompts", "group_size", "epochs", "max_new_tokens", "eval_prompts"):
            check(getattr(self, field) > 0, field, "must be positive")
        check(self.temperature > 0, "temperature", "must be positive (rollouts are sampled)")
        check(self.top_k >= 0, "top_k", "must be non-negative")
        check(bool(self.rewards), "rewards", "name at least one reward")
        try:
            re.compile(self.format_regex)
        except re.error as err:
            check(False, "format_regex", f"{self.format_regex!r} is not a regex ({err})")
        check(
            not self.reward_weights or len(self.reward_weights) == len(self.rewards),
            "reward_weights",
            f"give one weight per reward ({len(self.rewards)}) or none",
        )


ALIGN_LOSS_CONFIGS: dict[str, type] = {
    "reward": RewardLossConfig,
    "dpo": DPOLossConfig,
    "cdpo": CDPOLossConfig,
    "ipo": IPOLossConfig,
    "simpo": SimPOLossConfig,
    "orpo": ORPOLossConfig,
    "kto": KTOLossConfig,
    "ppo": PPOLossConfig,
    "grpo": GRPOLossConfig,
}

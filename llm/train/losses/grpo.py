"""GRPO: group-relative advantages, a clipped policy ratio and a k3 KL to the reference.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) drops PPO's value head: each prompt
gets a group of G completions, and a completion's advantage is its reward against its own
group's, broadcast over all of its tokens:

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)      (scale_rewards: true)
    A_i =  r_i - mean(r_group)                               (Dr. GRPO, arXiv:2503.20783)

with the population std (ddof 0) of the group and eps = 1e-4 (TRL's). Per completion token
t, with ratio rho_t = exp(log pi(t) - log pi_old(t)) and d_t = log pi_ref(t) - log pi(t):

    loss_t = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A)
             + kl_coef * (exp(d_t) - d_t - 1)          (the k3 estimate of KL(pi || ref))

clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476). The three
aggregations of `loss.aggregation` differ when completions differ in length, and each one's
`LossOutput` (total, weight) is chosen so that the train step's total / weight over any
split into micro-batches equals the whole batch's value exactly:

    token_mean     (DAPO)         total = sum_i sum_t loss_it            weight = sum_i n_i
    sequence_mean  (GRPO paper)   total = sum_i (sum_t loss_it) / n_i    weight = N rows
    constant       (Dr. GRPO)     total = sum_i sum_t loss_it / T_max    weight = N rows

(n_i: completion tokens of row i; T_max: rl.max_new_tokens, which the RL loop sets, as it
sets the sampling temperature). Metrics use the same weights: token sums under token_mean,
sums of per-sequence means otherwise.

`score_rollouts` reads the old policy's log-probs from the training forward (not the
engine's, which equal them to float tolerance: `sample_logp_gap` reports the difference), so
with one minibatch per iteration the first ratio is exactly 1. The reference is kept only
when kl_coef > 0 (`reference`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from llm.config.align import GRPOLossConfig
from llm.train.logprobs import ROW_LEAVES, token_logprobs
from llm.train.losses.base import Batch, LossOutput
from llm.train.losses.rl import ROW_AXES, RLLoss, Rollouts
from llm.typing import Array, PyTree

EPS = 1e-4  # added to the group's std (TRL's value)


def group_advantages(
    rewards_N: np.ndarray, group_N: np.ndarray, scale: bool, eps: float = EPS
) -> np.ndarray:
    """[N] float32: each reward minus its group's mean, divided by (std + eps) when `scale`."""
    rewards_N = np.asarray(rewards_N, np.float64)
    out = np.zeros_like(rewards_N)
    for g in np.unique(group_N):
        idx = np.flatnonzero(group_N == g)
        centred = rewards_N[idx] - rewards_N[idx].mean()
        out[idx] = centred / (rewards_N[idx].std() + eps) if scale else centred
    return out.astype(np.float32)


def _axes(kl_coef: float) -> Mapping[str, tuple[str | None, ...]]:
    leaves = {k: ROW_AXES for k in (*ROW_LEAVES, "old_logp")}
    if kl_coef > 0:
        leaves["ref_logp"] = ROW_AXES
    return types.MappingProxyType({**leaves, "advantages": ("batch",)})


@dataclasses.dataclass(frozen=True)
class GRPOLoss(RLLoss):
    """The GRPO objective; see the module docstring for the formula and aggregations."""

    model: Any  # ModelConfig of the decoder
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.04
    scale_rewards: bool = True
    aggregation: str = "sequence_mean"
    temperature: float = 1.0  # rl.temperature, set by the RL loop (the sampling distribution)
    max_new_tokens: int | None = None  # rl.max_new_tokens, set by the RL loop (constant)
    name = "grpo"

    @classmethod
    def from_config(cls, cfg: GRPOLossConfig, model: Any) -> GRPOLoss:
        return cls(model, cfg.clip_low, cfg.clip_high, cfg.kl_coef, cfg.scale_rewards,
                   cfg.aggregation)  # fmt: skip

    @property
    def reference(self) -> bool:  # type: ignore[override]
        """Only a KL term needs the reference policy; kl_coef 0 keeps none (no copy)."""
        return self.kl_coef > 0

    @property
    def batch_axes(self) -> Mapping[str, tuple[str | None, ...]]:  # type: ignore[override]
        return _axes(self.kl_coef)

    def score_rollouts(self, params: PyTree, frozen: PyTree, rows: Mapping[str, Array]) -> dict:
        """old_logp of the policy that sampled, ref_logp of the reference (kl_coef > 0)."""
        rows = {k: rows[k] for k in ROW_LEAVES}
        T = self.temperature
        out = {"old_logp": token_logprobs(self.model, params, frozen, rows, temperature=T).logp}
        if self.kl_coef > 0:
            ref = token_logprobs(self.model, params, frozen, rows, reference=True, temperature=T)
            out["ref_logp"] = ref.logp
        return out

    def training_batch(
        self, rollouts: Rollouts, scored: Mapping[str, np.ndarray], state: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
        """Group-normalised advantages [N]; GRPO carries no state between iterations."""
        rows = {k: np.asarray(rollouts.rows[k]) for k in ROW_LEAVES}
        mask_NL = rows["loss_mask"].astype(np.float32)
        if (empty := np.flatnonzero(mask_NL.sum(axis=1) == 0)).size:
            raise ValueError(f"rollout rows {empty[:8].tolist()} have no completion token")
        group_N = np.asarray(rollouts.group)
        adv_N = group_advantages(rollouts.rewards, group_N, self.scale_rewards)
        old_logp = np.asarray(scored["old_logp"], np.float32) * mask_NL
        batch = {**rows, "old_logp": old_logp, "advantages": adv_N}
        stds = [np.std(rollouts.rewards[group_N == g]) for g in np.unique(group_N)]
        metrics = {
            "score": float(np.mean(rollouts.rewards)),
            "zero_std_groups": float(np.mean(np.asarray(stds) == 0)),  # no learning signal
            "sample_logp_gap": float(np.abs(rollouts.sample_logp * mask_NL - old_logp).max()),
        }
        if self.kl_coef > 0:
            batch["ref_logp"] = np.asarray(scored["ref_logp"], np.float32) * mask_NL
            metrics["kl"] = float(((old_logp - batch["ref_logp"]) * mask_NL).sum(1).mean())
        return batch, metrics, dict(state)

    def per_token(self, logp: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
        """[B, L] loss of every token (masked later) and per-token metric values."""
        ratio = jnp.exp(logp - batch["old_logp"])
        adv = batch["advantages"][:, None]
        plain = ratio * adv
        clipped = jnp.clip(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high) * adv
        policy = -jnp.minimum(plain, clipped)
        values = {"policy_loss": policy, "clip_fraction": (clipped < plain).astype(jnp.float32)}
        loss = policy
        if self.kl_coef > 0:
            d = batch["ref_logp"] - logp
            kl = jnp.exp(d) - d - 1.0
            loss = loss + self.kl_coef * kl
            values["kl"] = kl
        return loss, values

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        rows = {k: batch[k] for k in ROW_LEAVES}
        logp = token_logprobs(self.model, params, frozen, rows, key=key,
                              temperature=self.temperature).logp  # fmt: skip
        mask = rows["loss_mask"].astype(jnp.float32)
        loss, values = self.per_token(logp, batch)
        weight, reduce_loss, reduce_metric = self.aggregate(mask)
        metrics = {k: reduce_metric(v) for k, v in values.items()}
        return LossOutput(reduce_loss(loss), weight, metrics)

    def aggregate(self, mask: Array) -> tuple[Array, Any, Any]:
        """(weight, [B, L] -> the loss's sum, [B, L] -> a metric's sum) of the aggregation."""
        n_B = jnp.sum(mask, axis=-1)
        rows = jnp.sum((n_B > 0).astype(jnp.float32))

        def token_sum(x: Array) -> Array:
            return jnp.sum(x * mask)

        def sequence_means(x: Array) -> Array:
            return jnp.sum(jnp.sum(x * mask, axis=-1) / jnp.maximum(n_B, 1.0))

        if self.aggregation == "token_mean":
            return jnp.sum(mask), token_sum, token_sum
        if self.aggregation == "sequence_mean":
            return rows, sequence_means, sequence_means
        if self.aggregation == "constant":
            if self.max_new_tokens is None:
                raise ValueError(
                    "loss.aggregation=constant divides by rl.max_new_tokens, which the RL "
                    "loop sets; build GRPOLoss with max_new_tokens=..."
                )
            T = float(self.max_new_tokens)
            return rows, lambda x: token_sum(x) / T, sequence_means
        raise ValueError(f"loss.aggregation: {self.aggregation!r} is not one of "
                         "token_mean, sequence_mean, constant")  # fmt: skip

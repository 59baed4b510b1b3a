"""PPO for language models: clipped policy ratio, a value head, GAE, a KL penalty to the
reference with an adaptive coefficient.

PPO (Schulman et al. 2017, arXiv:1707.06347) as used for language models by Ziegler et al.
2019 (arXiv:1909.08593) and InstructGPT (Ouyang et al. 2022, arXiv:2203.02155), with the
details of Huang et al. 2024 (arXiv:2403.17031, "The N+ implementation details of RLHF with
PPO"). One rollout is one episode whose actions are the completion's tokens:

  * reward (`training_batch`, host): r_t = -beta (log pi_old(a_t) - log pi_ref(a_t)) on every
    completion token, plus the sequence's score (llm/align/rewards.py) at its last token;
    beta from the KL controller (llm/train/kl_control.py), updated with the iteration's mean
    sequence KL. GAE(gamma, lam) (llm/train/advantages.py) gives advantages A_t (whitened
    over the iteration's tokens with `whiten_advantages`) and value targets R_t = A_t + V_t.
  * loss (`__call__`), per completion token, with ratio rho = exp(log pi - log pi_old):
      policy  max(-A rho, -A clip(rho, 1 - clip, 1 + clip))
      value   0.5 max((V - R)^2, (V_old + clip(V - V_old, -value_clip, value_clip) - R)^2)
      total   policy + value_coef * value - entropy_coef * entropy
    summed over tokens with weight = completion tokens, so the step's mean is the token
    mean over the whole batch and gradient accumulation over micro-batches is exact.

The value head "value_head" (w [D], b []) reads the decoder's final hidden state at every
token from the same forward pass as the log-probabilities (a shared trunk, as TRL's value
head model: the value loss also trains the decoder, scaled by value_coef). It starts at zero
(Huang et al.: value head zero-init), so the first iteration's values are 0 and no random
head injects noise into the first advantages.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from llm.config.align import PPOLossConfig
from llm.train.advantages import check_one_span, explained_variance, gae, whiten
from llm.train.kl_control import kl_controller
from llm.train.logprobs import ROW_LEAVES, token_logprobs
from llm.train.losses.base import Batch, LossOutput
from llm.train.losses.rl import ROW_AXES, RLLoss, Rollouts
from llm.train.trainable import Component
from llm.typing import Array, PyTree

VALUE_HEAD = "value_head"  # the head's component in the params tree
SCORED = ("old_logp", "old_values")  # what score_rollouts hands training_batch (and ref_logp)
TARGETS = ("advantages", "returns")
PPO_AXES = types.MappingProxyType({k: ROW_AXES for k in (*ROW_LEAVES, *SCORED, *TARGETS)})


def init_value_head(d_model: int) -> dict[str, Array]:
    """w [D], b [] at zero (see the module docstring)."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def token_values(params: PyTree, frozen: PyTree, hidden_NLD: Array) -> Array:
    """[N, L] float32: the value head on every position's final hidden state."""
    head = {**frozen.get(VALUE_HEAD, {}), **params.get(VALUE_HEAD, {})}
    if "w" not in head:
        raise ValueError(
            f"the PPO loss needs its {VALUE_HEAD!r} component; build the run with "
            "run_trainable (it adds the loss's components)"
        )
    return hidden_NLD.astype(jnp.float32) @ head["w"] + head["b"]


def completion_mask(loss_mask_NL: np.ndarray) -> np.ndarray:
    """float32 [N, L] mask of rollout rows that each hold one non-empty completion span."""
    mask_NL = np.asarray(loss_mask_NL, np.float32)
    check_one_span(mask_NL, "rollouts.rows['loss_mask']")
    empty = np.flatnonzero(mask_NL.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"rollout rows {empty[:8].tolist()} have no completion token, so their score "
            "has no token to go to"
        )
    return mask_NL


def penalised_rewards(
    score_N: np.ndarray, kl_NL: np.ndarray, mask_NL: np.ndarray, beta: float
) -> np.ndarray:
    """[N, L]: -beta * KL on every completion token, the score added at the last one
    (Ziegler et al. 2019, eq. 2; the score "at EOS" of Huang et al.)."""
    rewards_NL = (-beta * kl_NL * mask_NL).astype(np.float32)
    last_N = mask_NL.shape[1] - 1 - np.argmax(mask_NL[:, ::-1] > 0, axis=1)
    rewards_NL[np.arange(len(last_N)), last_N] += score_N
    return rewards_NL


@dataclasses.dataclass(frozen=True)
class PPOLoss(RLLoss):
    """The clipped PPO objective with a value head and a KL-penalised reward."""

    model: Any  # ModelConfig of the decoder
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_target: float | None = 6.0
    kl_horizon: int = 10000
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    # the rollouts' sampling temperature (rl.temperature, set by the RL loop): log-probs are
    # scored under softmax(logits / T), the distribution the engine drew from
    temperature: float = 1.0
    name = "ppo"
    batch_axes = PPO_AXES
    reference = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"PPO loss: temperature={self.temperature} must be positive")

    @classmethod
    def from_config(cls, cfg: PPOLossConfig, model: Any) -> PPOLoss:
        fields = {f.name for f in dataclasses.fields(cls)} - {"model", "temperature"}
        return cls(model, **{k: getattr(cfg, k) for k in sorted(fields)})

    @property
    def controller(self) -> Any:
        return kl_controller(self.kl_coef, self.kl_target, self.kl_horizon)

    def components(self, model: Any) -> dict[str, Component]:
        """The value head "value_head" on the final hidden state (zero init)."""
        return {
            VALUE_HEAD: Component(
                build=lambda key: init_value_head(model.d_model), axes={"w": P("embed"), "b": P()}
            )
        }

    def score_rollouts(self, params: PyTree, frozen: PyTree, rows: Mapping[str, Array]) -> dict:
        """old_logp and old_values from one policy forward, ref_logp from the reference."""
        rows = {k: rows[k] for k in ROW_LEAVES}
        T = self.temperature
        policy = token_logprobs(self.model, params, frozen, rows, temperature=T)
        ref = token_logprobs(self.model, params, frozen, rows, reference=True, temperature=T)
        mask_NL = rows["loss_mask"].astype(jnp.float32)
        values_NL = token_values(params, frozen, policy.hidden) * mask_NL
        return {"old_logp": policy.logp, "ref_logp": ref.logp, "old_values": values_NL}

    def training_batch(
        self, rollouts: Rollouts, scored: Mapping[str, np.ndarray], state: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
        """Per-token KL-penalised rewards -> GAE advantages and returns; the next KL state."""
        rows = {k: np.asarray(rollouts.rows[k]) for k in ROW_LEAVES}
        mask_NL = completion_mask(rows["loss_mask"])
        old_logp, ref_logp, old_values = (
            np.asarray(scored[k], np.float32) * mask_NL
            for k in ("old_logp", "ref_logp", "old_values")
        )
        score_N = np.asarray(rollouts.rewards, np.float32)
        if self.whiten_rewards:
            score_N = whiten(score_N, np.ones_like(score_N), shift_mean=False)
        beta = self.controller.coef(state)
        kl_NL = (old_logp - ref_logp) * mask_NL
        rewards_NL = penalised_rewards(score_N, kl_NL, mask_NL, beta)
        adv_NL, returns_NL = gae(rewards_NL, old_values, mask_NL, self.gamma, self.lam)
        tokens = float(mask_NL.sum())
        seq_kl_N = kl_NL.sum(axis=1)
        metrics = {
            "score": float(np.mean(rollouts.rewards)),
            "kl": float(seq_kl_N.mean()),
            "kl_coef": beta,
            "penalised_reward": float(np.mean(np.asarray(rollouts.rewards) - beta * seq_kl_N)),
            "returns": float(returns_NL.sum()) / tokens,
            "values": float(old_values.sum()) / tokens,
            "advantages_raw": float(adv_NL.sum()) / tokens,
            "value_explained_variance": explained_variance(old_values, returns_NL, mask_NL),
            # the engine's log-probs against the training forward's (llm/inference): ~0
            "sample_logp_gap": float(
                np.abs(np.asarray(rollouts.sample_logp, np.float32) * mask_NL - old_logp).max()
            ),
        }
        if self.whiten_advantages:
            adv_NL = whiten(adv_NL, mask_NL)
        next_state = self.controller.update(state, metrics["kl"], len(score_N))
        batch = {**rows, "old_logp": old_logp, "old_values": old_values}
        return {**batch, "advantages": adv_NL, "returns": returns_NL}, metrics, next_state

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        rows = {k: batch[k] for k in ROW_LEAVES}
        scored = token_logprobs(
            self.model, params, frozen, rows, key=key, temperature=self.temperature
        )
        mask = rows["loss_mask"].astype(jnp.float32)
        values = token_values(params, frozen, scored.hidden)
        policy, clipped = self.policy_loss(scored.logp, batch["old_logp"], batch["advantages"])
        value = self.value_loss(values, batch["old_values"], batch["returns"])
        per_token = policy + self.value_coef * value - self.entropy_coef * scored.entropy
        log_ratio = (scored.logp - batch["old_logp"]) * mask
        approx_kl = jnp.expm1(log_ratio) - log_ratio  # k3 estimate of KL(old || new)
        total = jnp.sum(per_token * mask)
        metrics = {
            "policy_loss": jnp.sum(policy * mask),
            "value_loss": jnp.sum(value * mask),
            "entropy": jnp.sum(scored.entropy * mask),
            "clip_fraction": jnp.sum(clipped * mask),
            "approx_kl": jnp.sum(approx_kl * mask),
        }
        return LossOutput(total, jnp.sum(mask), metrics)

    def policy_loss(self, logp: Array, old_logp: Array, adv: Array) -> tuple[Array, Array]:
        """(per-token clipped surrogate loss, 1.0 where the clipped branch was taken)."""
        ratio = jnp.exp(logp - old_logp)
        plain = -adv * ratio
        clipped = -adv * jnp.clip(ratio, 1.0 - self.clip, 1.0 + self.clip)
        return jnp.maximum(plain, clipped), (clipped > plain).astype(jnp.float32)

    def value_loss(self, values: Array, old_values: Array, returns: Array) -> Array:
        """Per-token clipped value loss: the larger of the plain and clipped squared errors."""
        moved = old_values + jnp.clip(values - old_values, -self.value_clip, self.value_clip)
        return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(moved - returns))

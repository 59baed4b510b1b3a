"""Reward model: a scalar head on the decoder, trained with the Bradley-Terry pairwise loss.

    loss_pair = -log sigmoid(r_c - r_r - m) + center_coef * (r_c + r_r)^2

* The reward r of a (prompt, completion) row is a linear head "reward_head" (w [D], b [])
  on the final hidden state (after the final norm) at the row's *last real token*, as in
  InstructGPT's reward model (Ouyang et al. 2022, arXiv:2203.02155, sec. 3.5: "a scalar
  reward" from the final token of the SFT model without its unembedding). Rows are rendered
  like SFT rows (llm/data/sft.py): the row ends with the completion's end-of-turn token (under
  ChatML with the template's newline after it), so the last real token is the only one that
  has attended to the whole prompt and the whole completion, including the decision to stop
  there; a completion that never ended is scored from its last token all the same.
* Bradley-Terry (Bradley & Terry 1952; InstructGPT eq. 1): P(chosen > rejected) =
  sigmoid(r_c - r_r); the loss is its negative log-likelihood per pair. Rewards are only
  defined up to a constant, which the optional centring term pins near 0 (Eisenstein et al.
  2023, arXiv:2312.09244; TRL's `center_rewards_coefficient`).
* Margin (Llama 2, Touvron et al. 2023, arXiv:2307.09288, sec. 3.2.2): the chosen reward
  must win by m. m = max(loss.margin, the pair's `margin`): the config sets a floor for every
  pair, and a record's margin (Llama 2's rating-dependent margin) raises it for that pair. A
  pair without one carries loss.margin (llm/data/preference.py fills it; NaN is read as
  none), so it gets the floor. Taking the larger of the two, rather than letting the record
  replace the config, means a global margin is never undercut by a record that happens to
  state a smaller one.
* The head starts at zero, so step 0 gives every pair equal rewards: loss exactly log 2 and
  accuracy 1/2 (a tie counts half, the chance value), and no random head perturbs the
  pretrained features (as the classification head, llm/train/losses/classification.py).

Batch (llm/data/preference.py): row leaves [B, 2, L] (index 0 chosen, 1 rejected), `weight`
[B] (0 on validation padding pairs) and `margin` [B]. Metrics, summed per pair like the loss:
`bt` (the Bradley-Terry part), `center`, `accuracy`, `reward_chosen`, `reward_rejected`,
`reward_margin` (r_c - r_r). Validation reports their means over held-out pairs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llm.config.align import RewardLossConfig
from llm.train.logprobs import forward_rows
from llm.train.losses.base import Batch, Loss, LossOutput
from llm.train.losses.classification import pool
from llm.train.trainable import Component
from llm.typing import Array, PyTree

HEAD = "reward_head"  # the scalar head's component in the params tree
PAIR = ("batch", None, "length")
ROW_LEAVES = ("inputs", "positions", "segment_ids", "targets", "loss_mask")
BATCH_AXES = types.MappingProxyType(
    {**{k: PAIR for k in ROW_LEAVES}, "weight": ("batch",), "margin": ("batch",)}
)
HEAD_AXES = {"w": P("embed"), "b": P()}


def init_reward_head(d_model: int) -> dict[str, Array]:
    """w [D] and b [] at zero: every completion scores 0 at step 0 (module docstring)."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def reward_head_component(d_model: int) -> Component:
    return Component(build=lambda key: init_reward_head(d_model), axes=HEAD_AXES)


def rewards(
    model_cfg: Any, params: PyTree, frozen: PyTree, rows: Mapping[str, Array], key: Any = None
) -> Array:
    """[...] float32: the reward of each row (any leading shape, e.g. pairs [B, 2, L]).

    Rows are flattened for one forward pass; the decoder runs through `model_forward`, so a
    LoRA or frozen-trunk reward model scores with its adapter applied."""
    lead, L = rows["inputs"].shape[:-1], rows["inputs"].shape[-1]
    flat = {k: rows[k].reshape(-1, L) for k in ("inputs", "positions", "segment_ids")}
    out = forward_rows(model_cfg, params, frozen, flat, key=key, return_logits=False)
    head = {**frozen.get(HEAD, {}), **params.get(HEAD, {})}
    last_ND = pool(out.hidden_BLD, flat["segment_ids"], "last").astype(jnp.float32)
    return (last_ND @ head["w"] + head["b"]).reshape(lead)


def pair_margin(floor: float, margin_B: Array) -> Array:
    """[B]: max(config floor, the record's margin), a missing (NaN) record margin read as 0."""
    record_B = jnp.where(jnp.isnan(margin_B), 0.0, margin_B.astype(jnp.float32))
    return jnp.maximum(jnp.float32(floor), record_B)


def bradley_terry(r_c_B: Array, r_r_B: Array, m_B: Array, center_coef: float) -> dict[str, Array]:
    """Per-pair terms: the loss, its Bradley-Terry and centring parts, and the win (1, 1/2, 0)."""
    diff_B = r_c_B - r_r_B
    bt_B = -jax.nn.log_sigmoid(diff_B - m_B)
    center_B = center_coef * jnp.square(r_c_B + r_r_B)
    win_B = jnp.where(diff_B > 0, 1.0, jnp.where(diff_B == 0, 0.5, 0.0))
    return {"loss": bt_B + center_B, "bt": bt_B, "center": center_B, "win": win_B}


@dataclasses.dataclass(frozen=True)
class RewardLoss(Loss):
    """Bradley-Terry loss of a scalar reward head on preference pairs (module docstring)."""

    model: Any  # ModelConfig of the decoder
    margin: float = 0.0  # floor of every pair's margin m
    center_coef: float = 0.0  # weight of (r_c + r_r)^2
    name = "reward"
    batch_axes = BATCH_AXES

    @classmethod
    def from_config(cls, cfg: RewardLossConfig, model: Any) -> RewardLoss:
        return cls(model, float(cfg.margin), float(cfg.center_coef))

    def components(self, model: Any) -> dict[str, Component]:
        """The scalar head "reward_head" (w [D], b [])."""
        return {HEAD: reward_head_component(model.d_model)}

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        rows = {k: batch[k] for k in ROW_LEAVES}
        r_B2 = rewards(self.model, params, frozen, rows, key)
        r_c_B, r_r_B = r_B2[:, 0], r_B2[:, 1]
        m_B = pair_margin(self.margin, batch["margin"])
        terms = bradley_terry(r_c_B, r_r_B, m_B, self.center_coef)
        w_B = batch["weight"].astype(jnp.float32)
        total = jnp.sum(terms["loss"] * w_B)
        metrics = {
            "bt": jnp.sum(terms["bt"] * w_B),
            "center": jnp.sum(terms["center"] * w_B),
            "accuracy": jnp.sum(terms["win"] * w_B),
            "reward_chosen": jnp.sum(r_c_B * w_B),
            "reward_rejected": jnp.sum(r_r_B * w_B),
            "reward_margin": jnp.sum((r_c_B - r_r_B) * w_B),
        }
        return LossOutput(total, jnp.sum(w_B), metrics)

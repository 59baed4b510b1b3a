"""Log-probabilities of given continuations, under the policy or the frozen reference.

    scored = token_logprobs(model_cfg, params, frozen, rows)                  # the policy
    ref = token_logprobs(model_cfg, params, frozen, rows, reference=True)     # the reference
    scored.logp        # [..., L]: log p(targets[t] | inputs[..t]) on loss_mask, else 0
    sequence_logprob(scored.logp)  # [...]: the continuation's summed log-probability

Every preference and RL loss reads log-probabilities through this one function, so they all
score exactly what SFT trains: `rows` are the SFT row leaves (`inputs`, `positions`,
`segment_ids`, `targets`, `loss_mask`; llm/data/sft.py), where `targets[t] = inputs[t + 1]`
and `loss_mask[t]` marks the completion's tokens. Rows may have any leading shape (a
preference pair is [B, 2, L]); they are flattened for one forward pass and shaped back.

The vocabulary's log-softmax is taken in float32 whatever the model's dtype, as the
cross-entropy of the training loss is (`llm.ops.cross_entropy.token_losses`), so the
log-probability of a continuation is minus its SFT loss to the last bit of the same math.
`hidden` (the final hidden state, [..., L, D]) is returned for heads read off the same
forward pass (PPO's value head); `entropy` ([..., L], on the mask) for entropy bonuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from llm.train.trainable import model_forward, reference_forward
from llm.typing import Array, PyTree

ROW_LEAVES = ("inputs", "positions", "segment_ids", "targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class Scored:
    """One forward pass over rows: per-token log-probabilities and what else losses read."""

    logp: Array  # [..., L] float32, log p(target) where loss_mask, else 0
    hidden: Array  # [..., L, D] final hidden state (the output layer's input)
    entropy: Array  # [..., L] float32, entropy of the next-token distribution on the mask


def token_logprobs(
    model_cfg: Any,
    params: PyTree,
    frozen: PyTree,
    rows: Mapping[str, Array],
    *,
    key: Any = None,
    reference: bool = False,
    temperature: float = 1.0,
) -> Scored:
    """Log-probabilities of `rows["targets"]` under the policy (or the reference policy).

    `temperature` divides the logits first: RL rollouts sampled at T score their ratio under
    softmax(logits / T), the distribution the engine drew from (llm/align/rollout.py)."""
    missing = [k for k in ROW_LEAVES if k not in rows]
    if missing:
        raise ValueError(f"rows lack leaves {missing}; need {list(ROW_LEAVES)}")
    lead, L = rows["inputs"].shape[:-1], rows["inputs"].shape[-1]
    flat = {k: rows[k].reshape(-1, L) for k in ROW_LEAVES}
    out = forward_rows(model_cfg, params, frozen, flat, key=key, reference=reference)
    logits_NLV = out.logits_BLV.astype(jnp.float32)
    if temperature != 1.0:
        logits_NLV = logits_NLV / temperature
    logz_NL = jax.nn.logsumexp(logits_NLV, axis=-1)
    picked_NL = jnp.take_along_axis(logits_NLV, flat["targets"][..., None], axis=-1)[..., 0]
    mask_NL = flat["loss_mask"].astype(jnp.float32)
    logp_NL = (picked_NL - logz_NL) * mask_NL
    probs_NLV = jax.nn.softmax(logits_NLV, axis=-1)
    entropy_NL = (logz_NL - jnp.sum(probs_NLV * logits_NLV, axis=-1)) * mask_NL
    D = out.hidden_BLD.shape[-1]
    return Scored(
        logp=logp_NL.reshape(*lead, L),
        hidden=out.hidden_BLD.reshape(*lead, L, D),
        entropy=entropy_NL.reshape(*lead, L),
    )


def forward_rows(
    model_cfg: Any,
    params: PyTree,
    frozen: PyTree,
    rows: Mapping[str, Array],
    *,
    key: Any = None,
    reference: bool = False,
    return_logits: bool = True,
) -> Any:
    """The decoder (or the reference) over [N, L] rows' inputs, positions and segment ids."""
    run = reference_forward if reference else model_forward
    return run(
        model_cfg,
        params,
        frozen,
        rows["inputs"],
        positions_BL=rows["positions"],
        segment_ids_BL=rows["segment_ids"],
        dropout_key=key,
        return_logits=return_logits,
    )


def sequence_logprob(logp: Array) -> Array:
    """[...]: the summed log-probability of each continuation (over its masked tokens)."""
    return jnp.sum(logp, axis=-1)


def token_count(rows: Mapping[str, Array]) -> Array:
    """[...]: completion tokens per row (the loss mask's sum), float32."""
    return jnp.sum(rows["loss_mask"].astype(jnp.float32), axis=-1)

"""KTO: Kahneman-Tversky optimisation on unpaired desirable / undesirable completions.

Ethayarajh et al. 2024, arXiv:2402.01306, eq. 8 and sec. 4.1. Each example is a prompt with
one completion labelled desirable (1) or undesirable (0); no pairs are needed. With
r = log pi(y|x) - log pi_ref(y|x) (summed over the completion's tokens) and the reference
point z0 = max(0, mean over the batch of log pi(y'|x) - log pi_ref(y'|x)) on MISMATCHED
pairs (x, y'), a prompt with another example's completion, the paper's estimate of
KL(pi || pi_ref), the loss of an example is
    desirable:    lam_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  lam_U * (1 - sigmoid(beta * (z0 - r)))
z0 carries no gradient (the paper, sec. 4.1: it only sets the reference point), and it is a
statistic of the batch the loss sees: under gradient accumulation (train.micro_batch_size)
each micro-batch uses its own estimate, as TRL does per device.

Batch (llm/data/preference.py): the SFT row leaves [B, 2, L] with index 0 the example (prompt
plus its completion) and index 1 its mismatched row (the same prompt with another example's
completion, drawn with a seed), `label` [B] float32 (1 desirable, 0 undesirable) and `weight`
[B] (1 real, 0 padding). `total` sums weight * loss, `weight` counts real examples.

Metrics: the step divides every sum by the number of examples, so the raw sums are kept
under `sum/...` and `derived_metrics` (training logs) and `evaluate` turn them into means
over the right examples: rewards/chosen and rewards/rejected (beta * r over desirable and
undesirable examples), margin (their difference), kl (the mean over desirable completions'
tokens of log pi - log pi_ref, the same k1 estimate as DPO's, llm/train/losses/dpo.py),
accuracy (desirable with r > z0 or undesirable with r < z0: on the side of the reference
point that the loss pushes it to; at the start r = z0 = 0, so 0), desirable (their share)
and z0.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config.align import KTOLossConfig
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.losses.dpo import PAIR_AXES, average, score_pairs
from llm.typing import Array, PyTree

KTO_AXES = types.MappingProxyType({**PAIR_AXES, "label": ("batch",)})


@dataclasses.dataclass(frozen=True)
class KTOLoss(Loss):
    """KTO (module docstring); beta and the weights lam_D, lam_U of the paper's eq. 8."""

    model: Any  # ModelConfig of the decoder
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    name = "kto"
    reference = True
    batch_axes = KTO_AXES

    @classmethod
    def from_config(cls, cfg: KTOLossConfig, model: Any) -> KTOLoss:
        return cls(model, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)

    def reference_point(self, pi_kl: Array, ref_kl: Array, weight: Array) -> Array:
        """z0: the clamped mean log-ratio of the batch's real mismatched rows, no gradient."""
        mean = jnp.sum((pi_kl - ref_kl) * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        return jnp.maximum(jax.lax.stop_gradient(mean), 0.0)

    def terms(
        self, pi: Array, ref: Array, pi_kl: Array, ref_kl: Array, label: Array, weight: Array
    ) -> tuple[Array, Array]:
        """([B] loss per example, z0) of [B] summed log-probs of the examples (pi, ref) and
        of their mismatched rows (pi_kl, ref_kl), the 0/1 labels and the example weights."""
        z0 = self.reference_point(pi_kl, ref_kl, weight)
        r = pi - ref
        good = self.desirable_weight * (1.0 - jax.nn.sigmoid(self.beta * (r - z0)))
        bad = self.undesirable_weight * (1.0 - jax.nn.sigmoid(self.beta * (z0 - r)))
        return label * good + (1.0 - label) * bad, z0

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        lp = score_pairs(self.model, params, frozen, batch, key, reference=True)
        w_B = batch["weight"].astype(jnp.float32)
        label_B = batch["label"].astype(jnp.float32)
        loss_B, z0 = self.terms(lp.pi_c, lp.ref_c, lp.pi_r, lp.ref_r, label_B, w_B)
        r_B = jax.lax.stop_gradient(lp.pi_c - lp.ref_c)
        good_B, bad_B = label_B * w_B, (1.0 - label_B) * w_B
        right_B = label_B * (r_B > z0) + (1.0 - label_B) * (r_B < z0)
        metrics = {
            "sum/rewards_desirable": jnp.sum(self.beta * r_B * good_B),
            "sum/rewards_undesirable": jnp.sum(self.beta * r_B * bad_B),
            "sum/kl_desirable": jnp.sum(average(r_B, lp.len_c) * good_B),
            "desirable": jnp.sum(good_B),
            "accuracy": jnp.sum(right_B * w_B),
            "z0": z0 * jnp.sum(w_B),
            "logp": jnp.sum(jax.lax.stop_gradient(lp.pi_c) * w_B),
        }
        return LossOutput(jnp.sum(loss_B * w_B), jnp.sum(w_B), metrics)

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        """Means over desirable / undesirable examples of the per-example sums (docstring);
        a side the batch has no example of reports nothing rather than 0."""
        m, out = train_metrics, {}
        good = float(m["desirable"])
        bad = 1.0 - good
        if good > 0:
            out["rewards/chosen"] = float(m["sum/rewards_desirable"]) / good
            out["kl"] = float(m["sum/kl_desirable"]) / good
        if bad > 0:
            out["rewards/rejected"] = float(m["sum/rewards_undesirable"]) / bad
        if good > 0 and bad > 0:
            out["margin"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out

    def evaluate(
        self,
        params: PyTree,
        frozen: PyTree,
        batches: Iterable[dict[str, np.ndarray]],
        *,
        tokenizer: Any = None,
        max_batches: int | None = None,
        put: Put | None = None,
    ) -> dict[str, float]:
        """The base means over validation examples, plus `derived_metrics` of them."""
        metrics = super().evaluate(
            params, frozen, batches, tokenizer=tokenizer, max_batches=max_batches, put=put
        )
        return {**metrics, **self.derived_metrics(metrics)}

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        parts = [f"val kto loss {m['loss']:.4f}"]
        for key in ("margin", "rewards/chosen", "rewards/rejected", "kl", "accuracy", "z0"):
            if key in m:
                parts.append(f"{key} {m[key]:.4f}")
        return ", ".join(parts) + f" over {m['weight']:.0f} examples"

"""Direct preference losses: DPO, conservative DPO, IPO, SimPO and ORPO, one class per paper.

Every loss here reads a batch of preference pairs (llm/data/preference.py): the SFT row
leaves `inputs`, `positions`, `segment_ids`, `targets`, `loss_mask`, each [B, 2, L] with
index 0 the chosen and index 1 the rejected completion of the same prompt (the mask covers
the completion's tokens only), and `weight` [B] (1 for a real pair, 0 for a padding pair).
`score_pairs` runs the pairs through `token_logprobs` once under the policy and, for a loss
with `reference = True`, once under the frozen reference, and reduces each row to
    pi_c, pi_r    summed log-probabilities of the chosen / rejected completion (policy)
    ref_c, ref_r  the same under the reference (zeros for a reference-free loss)
    len_c, len_r  completion lengths in tokens (the loss mask's sums)
Each loss is then a pure function `terms(pi_c, pi_r, ref_c, ref_r, len_c, len_r)` of those
[B] arrays (tested against NumPy formulas, values and gradients), returning the per-pair loss
and the implicit rewards of chosen and rejected:
  * DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): -log sigmoid(beta h), with
    h = (pi_c - ref_c) - (pi_r - ref_r); rewards beta (pi - ref).
  * cDPO (Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO",
    ericmitchell.ai/cdpo.pdf): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
  * IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17): (h - 1 / (2 beta))^2 on SUMMED
    log-probabilities, as the paper defines h. TRL divides IPO's log-probs by the length;
    that makes the target margin 1 / (2 beta) a per-token one. We keep the paper's form.
  * SimPO (Meng et al. 2024, arXiv:2405.14734, eq. 6): -log sigmoid(beta pi_c / len_c -
    beta pi_r / len_r - gamma); no reference; rewards beta * average log-prob.
  * ORPO (Hong et al. 2024, arXiv:2403.07691, eqs. 6-7): the chosen completion's NLL per
    token plus lam * -log sigmoid(lo_c - lo_r), lo = a - log(1 - exp(a)) the log-odds of the
    AVERAGE per-token log-prob a = pi / len (a summed log-prob drives exp(a) to 0 and the
    odds to nothing; the paper and TRL average). No reference; rewards are the log-odds.

Sums, not means (llm/train/losses/base.py): `total` is the sum of weight * loss over pairs,
`weight` the number of real pairs, and every metric a sum over real pairs: rewards/chosen,
rewards/rejected, margin (their difference), accuracy (margin > 0), logp/chosen and
logp/rejected (summed log-probs), and, for losses with a reference, kl: the mean over the
chosen completion's tokens of log pi - log pi_ref. That is the k1 estimate of KL(pi || ref)
per token taken on the data's chosen tokens rather than on samples of the policy, so it is
0 at the start and can go negative; it measures how far the policy's log-probabilities of the
preferred answers moved from the reference. Reference-free losses report no kl.
"""

from __future__ import annotations

import abc
import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from llm.config.align import (
    CDPOLossConfig,
    DPOLossConfig,
    IPOLossConfig,
    ORPOLossConfig,
    SimPOLossConfig,
)
from llm.train.logprobs import ROW_LEAVES, sequence_logprob, token_count, token_logprobs
from llm.train.losses.base import Batch, Loss, LossOutput
from llm.typing import Array, PyTree

PAIR_ROW = ("batch", None, "length")
PAIR_AXES = types.MappingProxyType({**{k: PAIR_ROW for k in ROW_LEAVES}, "weight": ("batch",)})
# ORPO: the average log-prob is capped this far below 0, so a completion the model already
# predicts with probability 1 (in float32) has log-odds about 13.8, not infinity
LOG_P_CAP = -1e-6


@dataclasses.dataclass(frozen=True)
class PairLogps:
    """[B] per pair (see the module docstring); `ref_*` are zeros without a reference."""

    pi_c: Array
    pi_r: Array
    ref_c: Array
    ref_r: Array
    len_c: Array
    len_r: Array


jax.tree_util.register_dataclass(
    PairLogps, data_fields=["pi_c", "pi_r", "ref_c", "ref_r", "len_c", "len_r"], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class PairTerms:
    """[B] per pair: the loss and the implicit rewards, plus any loss-specific metrics."""

    loss: Array
    chosen: Array
    rejected: Array
    extra: Mapping[str, Array] = dataclasses.field(default_factory=dict)


def score_pairs(
    model: Any, params: PyTree, frozen: PyTree, batch: Batch, key: Any, reference: bool
) -> PairLogps:
    """Summed log-probs of each pair's completions (policy; reference when asked), lengths."""
    rows = {k: batch[k] for k in ROW_LEAVES}
    pi_B2 = sequence_logprob(token_logprobs(model, params, frozen, rows, key=key).logp)
    if reference:  # deterministic: no dropout in the reference
        scored = token_logprobs(model, params, frozen, rows, reference=True)
        ref_B2 = sequence_logprob(scored.logp)
    else:
        ref_B2 = jnp.zeros_like(pi_B2)
    n_B2 = token_count(rows)
    return PairLogps(pi_B2[:, 0], pi_B2[:, 1], ref_B2[:, 0], ref_B2[:, 1], n_B2[:, 0], n_B2[:, 1])


def average(logp_B: Array, len_B: Array) -> Array:
    """Per-token mean log-prob; a padding pair's empty completion counts as one token."""
    return logp_B / jnp.maximum(len_B, 1.0)


def log_odds(avg_logp_B: Array) -> Array:
    """log(p / (1 - p)) of p = exp(a), a <= LOG_P_CAP: log(1 - e^a) as log(-expm1(a)) near 0
    and log1p(-e^a) far from it (Maechler 2012), both finite on the capped range."""
    a = jnp.minimum(avg_logp_B, LOG_P_CAP)
    log1m = jnp.where(a > -jnp.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))
    return a - log1m


@dataclasses.dataclass(frozen=True)
class PairLoss(Loss):
    """A loss over preference pairs: subclasses give `terms`, the formula of their paper."""

    model: Any  # ModelConfig of the decoder
    batch_axes = PAIR_AXES

    @abc.abstractmethod
    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        """The per-pair loss and implicit rewards of [B] log-probs (module docstring)."""

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        lp = score_pairs(self.model, params, frozen, batch, key, self.reference)
        t = self.terms(lp.pi_c, lp.pi_r, lp.ref_c, lp.ref_r, lp.len_c, lp.len_r)
        w_B = batch["weight"].astype(jnp.float32)
        margin_B = t.chosen - t.rejected
        per_pair = {
            "rewards/chosen": t.chosen,
            "rewards/rejected": t.rejected,
            "margin": margin_B,
            "accuracy": (margin_B > 0).astype(jnp.float32),
            "logp/chosen": lp.pi_c,
            "logp/rejected": lp.pi_r,
            **t.extra,
        }
        if self.reference:
            per_pair["kl"] = average(lp.pi_c - lp.ref_c, lp.len_c)
        metrics = {k: jnp.sum(jax.lax.stop_gradient(v) * w_B) for k, v in per_pair.items()}
        return LossOutput(jnp.sum(t.loss * w_B), jnp.sum(w_B), metrics)

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        kl = f", kl/token {m['kl']:.4f}" if "kl" in m else ""
        return (
            f"val {self.name} loss {m['loss']:.4f}, margin {m['margin']:.4f} "
            f"(chosen {m['rewards/chosen']:.4f}, rejected {m['rewards/rejected']:.4f}), "
            f"accuracy {m['accuracy']:.4f}{kl} over {m['weight']:.0f} pairs"
        )


def _log_ratio(beta: float, pi: Array, ref: Array) -> Array:
    """DPO's implicit reward beta * (log pi - log pi_ref) of a completion (eq. 5)."""
    return beta * (pi - ref)


@dataclasses.dataclass(frozen=True)
class DPOLoss(PairLoss):
    """DPO, the sigmoid loss: Rafailov et al. 2023, arXiv:2305.18290, eq. 7."""

    beta: float = 0.1
    name = "dpo"
    reference = True

    @classmethod
    def from_config(cls, cfg: DPOLossConfig, model: Any) -> DPOLoss:
        return cls(model, cfg.beta)

    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        chosen, rejected = _log_ratio(self.beta, pi_c, ref_c), _log_ratio(self.beta, pi_r, ref_r)
        return PairTerms(-jax.nn.log_sigmoid(chosen - rejected), chosen, rejected)


@dataclasses.dataclass(frozen=True)
class CDPOLoss(PairLoss):
    """Conservative DPO: DPO whose labels are flipped with probability eps (label smoothing),
    Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO"."""

    beta: float = 0.1
    label_smoothing: float = 0.1
    name = "cdpo"
    reference = True

    @classmethod
    def from_config(cls, cfg: CDPOLossConfig, model: Any) -> CDPOLoss:
        return cls(model, cfg.beta, cfg.label_smoothing)

    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        chosen, rejected = _log_ratio(self.beta, pi_c, ref_c), _log_ratio(self.beta, pi_r, ref_r)
        z, eps = chosen - rejected, self.label_smoothing
        loss = -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
        return PairTerms(loss, chosen, rejected)


@dataclasses.dataclass(frozen=True)
class IPOLoss(PairLoss):
    """IPO: Azar et al. 2023, arXiv:2310.12036, eq. 17, on summed log-probs (beta is tau)."""

    beta: float = 0.1
    name = "ipo"
    reference = True

    @classmethod
    def from_config(cls, cfg: IPOLossConfig, model: Any) -> IPOLoss:
        return cls(model, cfg.beta)

    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        h = (pi_c - ref_c) - (pi_r - ref_r)
        loss = (h - 1.0 / (2.0 * self.beta)) ** 2
        return PairTerms(
            loss, _log_ratio(self.beta, pi_c, ref_c), _log_ratio(self.beta, pi_r, ref_r)
        )


@dataclasses.dataclass(frozen=True)
class SimPOLoss(PairLoss):
    """SimPO: reference-free, length-normalised, with a target margin gamma; Meng et al.
    2024, arXiv:2405.14734, eq. 6."""

    beta: float = 2.0
    gamma: float = 1.0
    name = "simpo"

    @classmethod
    def from_config(cls, cfg: SimPOLossConfig, model: Any) -> SimPOLoss:
        return cls(model, cfg.beta, cfg.gamma)

    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        chosen = self.beta * average(pi_c, len_c)
        rejected = self.beta * average(pi_r, len_r)
        return PairTerms(-jax.nn.log_sigmoid(chosen - rejected - self.gamma), chosen, rejected)


@dataclasses.dataclass(frozen=True)
class ORPOLoss(PairLoss):
    """ORPO: SFT on the chosen completion plus lam times the odds-ratio loss; Hong et al.
    2024, arXiv:2403.07691, eqs. 6-7, on average per-token log-probs."""

    lam: float = 0.1
    name = "orpo"

    @classmethod
    def from_config(cls, cfg: ORPOLossConfig, model: Any) -> ORPOLoss:
        return cls(model, cfg.lam)

    def terms(
        self, pi_c: Array, pi_r: Array, ref_c: Array, ref_r: Array, len_c: Array, len_r: Array
    ) -> PairTerms:
        avg_c = average(pi_c, len_c)
        chosen, rejected = log_odds(avg_c), log_odds(average(pi_r, len_r))
        nll = -avg_c
        loss = nll - self.lam * jax.nn.log_sigmoid(chosen - rejected)
        return PairTerms(loss, chosen, rejected, {"nll": nll})

"""Supervised fine-tuning: cross-entropy of the next token on assistant tokens only.

The objective is causal language modelling (`CausalLMLoss`) restricted by the batch's
`loss_mask`, which llm/data/sft.py sets on exactly the assistant tokens of each rendered
conversation (contents and each end-of-turn token; never system or user tokens). This is the
SFT of InstructGPT (Ouyang et al. 2022, sec. 3.5) with the prompt tokens masked out, as in
TRL's `assistant_only_loss`. Validation reports what SFT is judged by on held-out chats: the
mean assistant-token cross-entropy (nats/token) and the fraction of assistant tokens whose
greedy (arg-max) prediction is the reference token. With `model.prefix_lm` each chat's first
prompt is a bidirectional prefix (prefix-LM SFT, llm/model/prefix_lm.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from llm.config.loss import SFTLossConfig
from llm.model.prefix_lm import sft_prefix
from llm.ops.cross_entropy import cross_entropy_plain
from llm.train.losses.base import Batch, Loss, LossOutput
from llm.train.losses.causal_lm import CausalLMLoss
from llm.train.trainable import model_forward
from llm.typing import PyTree


@dataclasses.dataclass(frozen=True)
class SFTLoss(CausalLMLoss):
    """`CausalLMLoss` over the assistant mask, with assistant-token accuracy in validation."""

    name = "sft"

    @classmethod
    def from_config(cls, cfg: SFTLossConfig, model: Any) -> SFTLoss:
        return cls(model, cfg.z_loss, cfg.label_smoothing, cfg.chunk_size)

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        out = model_forward(
            self.model,
            params,
            frozen,
            batch["inputs"],
            positions_BL=batch["positions"],
            segment_ids_BL=batch["segment_ids"],
            dropout_key=key,
            return_logits=self.chunk_size is None,
            **self._prefix(batch),
        )
        return self._sums(params, frozen, batch, out)

    def _prefix(self, batch: Batch) -> dict:
        """A prefix-LM (`model.prefix_lm`) reads each chat's first prompt bidirectionally
        (llm/model/prefix_lm.py); the loss stays on the assistant tokens after it."""
        if not getattr(self.model, "prefix_lm", False):
            return {}
        mask, positions, segments = batch["loss_mask"], batch["positions"], batch["segment_ids"]
        return {"prefix_BL": sft_prefix(mask, positions, segments)}

    @functools.cached_property
    def _eval_sums(self) -> Callable[[PyTree, PyTree, Batch], LossOutput]:
        """Sums of cross-entropy and of correct greedy predictions over masked tokens."""

        def sums(params: PyTree, frozen: PyTree, batch: Batch) -> LossOutput:
            out = model_forward(
                self.model,
                params,
                frozen,
                batch["inputs"],
                positions_BL=batch["positions"],
                segment_ids_BL=batch["segment_ids"],
                **self._prefix(batch),
            )
            logits, targets, mask = out.logits_BLV, batch["targets"], batch["loss_mask"]
            _, ce = cross_entropy_plain(logits, targets, mask)
            hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
            weight = jnp.sum(mask.astype(jnp.float32))
            return LossOutput(total=ce, weight=weight, metrics={"accuracy": jnp.sum(hit * mask)})

        return jax.jit(sums)

    # the base's mean of `_eval_sums` (assistant loss, accuracy), not the LM's perplexity
    evaluate = Loss.evaluate

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        return (
            f"val assistant loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f} "
            f"over {m['weight']:.0f} tokens"
        )

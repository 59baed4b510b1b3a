"""Causal language modelling: next-token cross-entropy over `loss_mask`, plus aux losses.

The objective of pretraining and of supervised fine-tuning (SFT masks the prompt tokens out
through `loss_mask`). Its validation metrics are the language-model ones: mean cross-entropy
per token, perplexity and bits per byte (llm/train/evaluate.py).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from llm.config import CausalLMLossConfig, ModelConfig
from llm.model import unembed
from llm.ops.cross_entropy import cross_entropy_chunked, cross_entropy_plain
from llm.train.evaluate import evaluate
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.trainable import forward_extras, model_forward, model_params
from llm.typing import PyTree

LM_AXES = ("batch", "length")
LM_LEAVES = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class CausalLMLoss(Loss):
    """Cross-entropy of each next token, optionally with z-loss and label smoothing.

    Aux losses (e.g. MoE load balancing) are per-batch means; they are weighted by the token
    count so that dividing the accumulated total by the total weight averages them.
    """

    model: ModelConfig
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    chunk_size: int | None = None
    name = "causal_lm"  # class attributes, not fields: the same for every instance
    batch_axes = types.MappingProxyType({k: LM_AXES for k in LM_LEAVES})

    @classmethod
    def from_config(cls, cfg: CausalLMLossConfig, model: ModelConfig) -> CausalLMLoss:
        return cls(model, cfg.z_loss, cfg.label_smoothing, cfg.chunk_size)

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        out = model_forward(
            self.model,
            params,
            frozen,
            batch["inputs"],
            positions_BL=batch.get("positions"),
            segment_ids_BL=batch.get("segment_ids"),
            dropout_key=key,
            return_logits=self.chunk_size is None,
        )
        targets, mask = batch["targets"], batch["loss_mask"]
        kw = {"z_coef": self.z_loss, "smoothing": self.label_smoothing}
        if self.chunk_size is None:
            loss, ce = cross_entropy_plain(out.logits_BLV, targets, mask, **kw)
        else:
            weights = model_params(params, frozen)  # the output layer (CSE'd under jit)
            project = lambda h: unembed(self.model, weights, h)  # noqa: E731
            loss, ce = cross_entropy_chunked(
                project, out.hidden_BLD, targets, mask, chunk_size=self.chunk_size, **kw
            )
        weight = jnp.sum(mask.astype(jnp.float32))
        metrics = {"ce": ce}
        for name, value in out.aux_losses.items():
            loss = loss + value * weight
            metrics[name] = value * weight
        return LossOutput(total=loss, weight=weight, metrics=metrics)

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
        """loss (cross-entropy, nats/token), ppl, bpb: `llm.train.evaluate.evaluate`."""
        weights, extras = model_params(params, frozen), forward_extras(params, frozen)
        return evaluate(
            self.model, weights, batches, tokenizer, max_batches, put=put, extras=extras
        )

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(float(train_metrics["loss"]), 700.0))}

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        return f"val loss {m['loss']:.4f}, ppl {m['ppl']:.2f}, bpb {m['bpb']:.4f}"

"""Masked language modelling: BERT's pre-training objective for a bidirectional encoder.

Devlin et al., 2019 (arXiv:1810.04805, sec. 3.1): about 15% of the ordinary tokens are
selected; the input shows [MASK] for 80% of them, a random token for 10% and the token
itself for 10% (`llm.data.objectives.mlm_mask`, data.objective=mlm), and the loss is the
cross-entropy of the original token at the selected positions only (the batch's
`loss_mask`), read from the same position (no shift: the encoder sees both sides).
Liu et al., 2019 (RoBERTa, arXiv:1907.11692) drop next-sentence prediction, as we do.

Validation reports the mean cross-entropy over masked tokens, perplexity, masked-token
accuracy (greedy prediction equals the original token) and bits per byte of the masked
tokens. These measure filling a gap from both sides: not comparable with a causal model's
bits per byte, which predicts each token from its left context only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.config.loss import MLMLossConfig
from llm.data.packing import count_bytes
from llm.ops.cross_entropy import cross_entropy_plain
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.losses.causal_lm import LM_AXES, LM_LEAVES
from llm.train.trainable import model_forward
from llm.typing import PyTree


@dataclasses.dataclass(frozen=True)
class MLMLoss(Loss):
    """Cross-entropy of the masked-out tokens, plus the model's auxiliary losses."""

    model: ModelConfig
    label_smoothing: float = 0.0
    name = "mlm"
    batch_axes = types.MappingProxyType({k: LM_AXES for k in LM_LEAVES})

    def __post_init__(self) -> None:
        if self.model.causal:
            raise ValueError(
                "loss.name=mlm predicts masked tokens from both sides: set model.causal=false "
                "(a causal model cannot see the context after the mask)"
            )

    @classmethod
    def from_config(cls, cfg: MLMLossConfig, model: ModelConfig) -> MLMLoss:
        return cls(model, cfg.label_smoothing)

    def _forward(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any):
        return model_forward(
            self.model, params, frozen, batch["inputs"], positions_BL=batch["positions"],
            segment_ids_BL=batch["segment_ids"], dropout_key=key,
        )  # fmt: skip

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        out = self._forward(params, frozen, batch, key)
        targets, mask = batch["targets"], batch["loss_mask"]
        loss, ce = cross_entropy_plain(
            out.logits_BLV, targets, mask, smoothing=self.label_smoothing
        )
        weight = jnp.sum(mask.astype(jnp.float32))
        metrics = {"ce": ce}
        for name, value in out.aux_losses.items():
            loss = loss + value * weight
            metrics[name] = value * weight
        return LossOutput(total=loss, weight=weight, metrics=metrics)

    @functools.cached_property
    def _masked_sums(self):
        """(summed CE, correct greedy predictions, masked tokens) of a batch: sums under jit,
        so global over every process's rows."""

        def sums(params: PyTree, frozen: PyTree, batch: Batch):
            out = self._forward(params, frozen, batch, None)
            logits, targets, mask = out.logits_BLV, batch["targets"], batch["loss_mask"]
            _, ce = cross_entropy_plain(logits, targets, mask)
            hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
            return ce, jnp.sum(hit * mask), jnp.sum(mask.astype(jnp.float32))

        return jax.jit(sums)

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
        """loss (nats per masked token), ppl, masked_accuracy, bpb (of the masked tokens)."""
        put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
        nats = hits = tokens = 0.0
        n_bytes = n = 0
        for batch in batches:
            if max_batches is not None and n >= max_batches:
                break
            ce, hit, count = self._masked_sums(params, frozen, put(batch))
            nats, hits, tokens = nats + float(ce), hits + float(hit), tokens + float(count)
            if tokenizer is not None:
                n_bytes += count_bytes(tokenizer, batch["targets"], batch["loss_mask"])
            n += 1
        if jax.process_count() > 1:  # each process decoded the bytes of its own rows
            from jax.experimental import multihost_utils

            n_bytes = int(np.sum(multihost_utils.process_allgather(np.array(n_bytes))))
        if tokens == 0:
            raise ValueError("MLM evaluation saw no masked tokens (empty validation data?)")
        loss = nats / tokens
        out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "masked_accuracy": hits / tokens}
        if n_bytes:
            out["bpb"] = nats / math.log(2) / n_bytes
        return out | {"tokens": tokens, "bytes": n_bytes, "batches": n}

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(float(train_metrics["loss"]), 700.0))}

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        bpb = f", bpb {m['bpb']:.4f}" if "bpb" in m else ""
        return (
            f"val masked-token loss {m['loss']:.4f}, ppl {m['ppl']:.2f}, accuracy "
            f"{m['masked_accuracy']:.4f}{bpb} over {m['tokens']:.0f} masked tokens"
        )

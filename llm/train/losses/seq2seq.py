"""Sequence-to-sequence cross-entropy: an encoder-decoder predicts the target given the source.

The objective of T5 (Raffel et al. 2020, arXiv:1910.10683): the encoder reads the source, the
decoder reads the target shifted right (teacher forcing) and the loss is the cross-entropy of
each target token, summed over `loss_mask`. The batch (llm/data/seq2seq.py):

    encoder_inputs       [B, S] int32  source tokens, then pad
    encoder_segment_ids  [B, S] int32  1 on source tokens, 0 on padding (masked as keys)
    inputs               [B, T] int32  decoder inputs: start id (BOS) then the target
    targets              [B, T] int32  the target followed by EOS
    segment_ids          [B, T] int32  1 on the target's positions, 0 on padding
    loss_mask            [B, T] f32    1 where a target token is predicted

Span corruption (`data.objective=span_corruption`) and a pair set (`data.format=seq2seq`) make
the same batch. Auxiliary losses of the model (`ModelOutput.aux_losses`, e.g. MoE load
balancing) are added weighted by the token count, as in `CausalLMLoss`. Validation reports the
mean target cross-entropy (nats/token), perplexity, greedy token accuracy and bits per byte:
the target nats (sentinels and EOS included) over the UTF-8 bytes the target tokens decode to
(sentinel ids, above the tokenizer's vocabulary, and specials count zero bytes). For span
corruption that is bits per byte of the corrupted-out text, not of the whole text: it is not
comparable to a causal LM's bpb.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.data.packing import count_bytes
from llm.data.seq2seq import ENCDEC_ARCHS, ENCDEC_LEAVES
from llm.model import seq2seq_forward
from llm.model.outputs import ModelOutput
from llm.ops.cross_entropy import cross_entropy_plain
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.trainable import forward_extras, model_params
from llm.typing import PyTree

# (model cfg, params, encoder_tokens_BS, decoder_tokens_BL, **kw) -> ModelOutput
Seq2SeqForward = Callable[..., ModelOutput]


@dataclasses.dataclass(frozen=True)
class Seq2SeqLoss(Loss):
    """Target-token cross-entropy of an encoder-decoder, optionally with z-loss and label
    smoothing; `forward` replaces the model (tests pass a fake; None = seq2seq_forward)."""

    model: ModelConfig
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    forward: Seq2SeqForward | None = None
    name = "seq2seq"
    batch_axes = types.MappingProxyType({k: ("batch", "length") for k in ENCDEC_LEAVES})

    @classmethod
    def from_config(cls, cfg: Any, model: ModelConfig) -> Seq2SeqLoss:
        if model.arch not in ENCDEC_ARCHS:
            raise ValueError(
                f"loss.name=seq2seq trains an encoder-decoder (model.arch in {ENCDEC_ARCHS}), "
                f"got model.arch={model.arch!r}; a decoder trains on seq2seq pairs with sft"
            )
        return cls(model, cfg.z_loss, cfg.label_smoothing)

    def run(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> ModelOutput:
        """The model's output on `batch` (refusing forward-pass PEFT, which is decoder-only)."""
        if forward_extras(params, frozen) is not None:
            raise ValueError(
                "prompt / prefix tuning and bottleneck adapters change the decoder-only forward; "
                "loss.name=seq2seq supports full training, train.freeze and LoRA-style adapters"
            )
        forward = self.forward or seq2seq_forward
        return forward(
            self.model,
            model_params(params, frozen),
            batch["encoder_inputs"],
            batch["inputs"],
            encoder_segment_ids_BS=batch["encoder_segment_ids"],
            decoder_segment_ids_BL=batch["segment_ids"],
            dropout_key=key,
        )

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        out = self.run(params, frozen, batch, key)
        targets, mask = batch["targets"], batch["loss_mask"]
        kw = {"z_coef": self.z_loss, "smoothing": self.label_smoothing}
        loss, ce = cross_entropy_plain(out.logits_BLV, targets, mask, **kw)
        weight = jnp.sum(mask.astype(jnp.float32))
        metrics = {"ce": ce}
        for name, value in out.aux_losses.items():
            loss = loss + value * weight
            metrics[name] = value * weight
        return LossOutput(total=loss, weight=weight, metrics=metrics)

    @functools.cached_property
    def _eval_sums(self) -> Callable[[PyTree, PyTree, Batch], LossOutput]:
        """Sums of plain cross-entropy and of correct greedy predictions over target tokens."""

        def sums(params: PyTree, frozen: PyTree, batch: Batch) -> LossOutput:
            out = self.run(params, frozen, batch, None)
            logits, targets, mask = out.logits_BLV, batch["targets"], batch["loss_mask"]
            _, ce = cross_entropy_plain(logits, targets, mask)
            hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
            weight = jnp.sum(mask.astype(jnp.float32))
            return LossOutput(total=ce, weight=weight, metrics={"accuracy": jnp.sum(hit * mask)})

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
        """loss (target CE, nats/token), ppl, accuracy, and bpb over target bytes."""
        n_bytes = 0

        def counted(batches: Iterable[dict[str, np.ndarray]]):
            nonlocal n_bytes
            for batch in batches:
                n_bytes += target_bytes(tokenizer, batch["targets"], batch["loss_mask"])
                yield batch

        out = Loss.evaluate(
            self, params, frozen, counted(batches), max_batches=max_batches, put=put
        )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            n_bytes = int(np.sum(multihost_utils.process_allgather(np.array(n_bytes))))
        nats = out["loss"] * out["weight"]
        return {
            **out,
            "ppl": math.exp(min(out["loss"], 700.0)),
            "bpb": nats / math.log(2) / max(n_bytes, 1),
            "bytes": n_bytes,
        }

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(float(train_metrics["loss"]), 700.0))}

    def summary(self, metrics: Mapping[str, float]) -> str:
        m = metrics
        return (
            f"val target loss {m['loss']:.4f}, ppl {m['ppl']:.2f}, bpb {m['bpb']:.4f} "
            f"(target bytes), token accuracy {m['accuracy']:.4f}"
        )


def target_bytes(tokenizer: Any, targets_BT: np.ndarray, mask_BT: np.ndarray) -> int:
    """UTF-8 bytes of the masked targets, sentinels (ids >= the tokenizer's vocab) excluded."""
    real = (np.asarray(mask_BT) > 0) & (np.asarray(targets_BT) < tokenizer.vocab_size)
    return count_bytes(tokenizer, targets_BT, real.astype(np.float32))

"""Causal language modelling: next-token cross-entropy over `loss_mask`, plus aux losses.

The objective of pretraining and of supervised fine-tuning (SFT masks the prompt tokens out
through `loss_mask`). Its validation metrics are the language-model ones: mean cross-entropy
per token, perplexity and bits per byte (llm/train/evaluate.py).

`StreamCausalLMLoss` is the same objective over stream-ordered batches (data.order=streams,
llm/data/streams.py), which add the `continues` [B] leaf. Its `carried` form is truncated
backpropagation through time (Williams & Peng 1990; the language-model setting of Mikolov et
al. 2010 and Zaremba et al. 2014): each row of a recurrent model starts from the state its
stream reached at the end of the previous batch (zero where the row does not continue a
document), under `lax.stop_gradient`, so gradients flow through the L tokens of this batch
only, and the final state is handed back for the next step (`TrainState.carry`). Validation is
unchanged: every validation row starts from a zero state (`evaluate`, as without streams).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import CausalLMLossConfig, ModelConfig
from llm.data.streams import CONTINUES
from llm.model import unembed
from llm.model.outputs import ModelOutput
from llm.model.recurrent import RecurrentCache
from llm.ops.cross_entropy import cross_entropy_chunked, cross_entropy_plain
from llm.train.evaluate import evaluate
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.trainable import forward_extras, model_forward, model_params
from llm.typing import Array, PyTree

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
        return self._sums(params, frozen, batch, out)

    def _sums(self, params: PyTree, frozen: PyTree, batch: Batch, out: ModelOutput) -> LossOutput:
        """The loss sums of the model output `out` on `batch`."""
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


Carry = dict[str, Array]  # TrainState.carry: a RecurrentCache's arrays by field name


@dataclasses.dataclass(frozen=True)
class StreamCausalLMLoss(CausalLMLoss):
    """CausalLMLoss over stream-ordered batches; `carried` is its truncated-BPTT form.

    Called plainly (`__call__`), every row starts from a zero state and `continues` is only
    read for its shape: a stream-ordered run without `train.tbptt`, the ablation of carrying.
    """

    batch_axes = types.MappingProxyType({**CausalLMLoss.batch_axes, CONTINUES: ("batch",)})

    @classmethod
    def of(cls, loss: Loss) -> StreamCausalLMLoss:
        """The stream form of a plain `CausalLMLoss` (data.order=streams)."""
        if type(loss) is not CausalLMLoss:
            raise ValueError(
                f"data.order=streams trains a causal LM on packed text (loss.name=causal_lm); "
                f"loss {loss.name!r} ({type(loss).__name__}) reads other batches"
            )
        return cls(**{f.name: getattr(loss, f.name) for f in dataclasses.fields(loss)})

    def carried(
        self, params: PyTree, frozen: PyTree, batch: Batch, key: Any, carry: Carry
    ) -> tuple[LossOutput, Carry]:
        """(the loss sums, the state after this batch) with each row starting from its
        `carry` row, zeroed where `continues` is 0; no gradient reaches the previous batch."""
        start = jax.lax.stop_gradient(start_state(carry, batch[CONTINUES]))
        out = model_forward(
            self.model,
            params,
            frozen,
            batch["inputs"],
            segment_ids_BL=batch["segment_ids"],  # positions mean nothing to a recurrent model
            dropout_key=key,
            return_logits=self.chunk_size is None,
            cache=start,
        )
        return self._sums(params, frozen, batch, out), carry_of(out.cache)


def initial_carry(model: ModelConfig, batch: int) -> Carry:
    """The zero state of `batch` rows (the start of every stream); refuses a model that has
    none (only unidirectional rnn / lstm / gru carry state)."""
    if not model.recurrent or model.rnn_bidirectional:
        raise ValueError(
            f"train.tbptt carries a recurrent state: it needs model.arch rnn, lstm or gru, "
            f"unidirectional; got arch={model.arch!r}, rnn_bidirectional={model.rnn_bidirectional}"
        )
    zero = carry_of(RecurrentCache.init(model, batch))
    return {k: jnp.array(v, copy=True) for k, v in zero.items()}  # own buffers: donated apart


def carry_of(cache: RecurrentCache) -> Carry:
    """The cache's arrays by field name (an LSTM's cell state only when it has one)."""
    fields = {"h_YBH": cache.h_YBH, "c_YBH": cache.c_YBH, "lengths_B": cache.lengths_B}
    return {k: v for k, v in fields.items() if v is not None}


def start_state(carry: Carry, continues_B: Array) -> RecurrentCache:
    """The carried state with the rows that do not continue their document zeroed."""
    keep_B = continues_B > 0
    keep = lambda x: jnp.where(keep_B[None, :, None], x, 0.0)  # noqa: E731  [Y, B, H]
    c_YBH = carry.get("c_YBH")
    lengths_B = jnp.where(keep_B, carry["lengths_B"], 0)
    return RecurrentCache(keep(carry["h_YBH"]), None if c_YBH is None else keep(c_YBH), lengths_B)

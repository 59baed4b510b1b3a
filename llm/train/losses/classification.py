"""Sequence classification: cross-entropy over a label set, scored two ways (`loss.head`).

* `linear`: a new head W [D, C], b [C] on the pooled final hidden state (after the final
  norm), the fine-tuning recipe of GPT (Radford et al. 2018, "Improving language
  understanding by generative pre-training", sec. 3.2: a linear layer on the last token's
  activation). `pooling: last` reads the last real token, the only one that has attended
  to the whole input in a causal decoder; `pooling: mean` averages the real tokens
  (Reimers & Gurevych 2019, arXiv:1908.10084). The head is the component "classifier"
  beside the decoder (`components`), so it is built and trained under full fine-tuning,
  `train.freeze` and any `peft.method`; it starts at zero, so step 0 predicts uniformly
  (loss exactly log C) and no random head perturbs the pretrained features.
* `label_tokens`: no new parameters; a label's score is the language model's log-probability
  of its verbaliser tokens after the prompt, as in pattern-verbaliser fine-tuning (PET,
  Schick & Schütze 2021, arXiv:2001.07676) and GPT-3's few-shot scoring (Brown et al. 2020,
  arXiv:2005.14165). Each example arrives as C rows, the prompt followed by each label's
  verbaliser (llm/data/classification.py, `candidate_rows`); logits are computed only at
  the scored positions, so the vocabulary projection costs C x M rows per example.

Both train the softmax cross-entropy over the C scores, one term per example (weighted by
`weight`, 0 on padding rows). Validation reports the mean loss, accuracy, macro-F1, per-class
F1 and the confusion matrix (llm/eval/classification.py).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from llm.config.loss import ClassificationLossConfig
from llm.eval.classification import classification_metrics, report
from llm.model import unembed
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.trainable import Component, model_forward, model_params
from llm.typing import Array, PyTree

HEAD = "classifier"  # the linear head's component in the params tree
ROW = ("batch", "length")
CANDIDATES = ("batch", None, "length")
LINEAR_AXES = types.MappingProxyType(
    {"inputs": ROW, "positions": ROW, "segment_ids": ROW, "label": ("batch",), "weight": ("batch",)}
)
TOKEN_AXES = types.MappingProxyType(
    {
        **{k: CANDIDATES for k in ("inputs", "positions", "segment_ids")},
        **{k: ("batch", None, None) for k in ("score_at", "score_ids", "score_mask")},
        "label": ("batch",),
        "weight": ("batch",),
    }
)


def pool(hidden_BLD: Array, segment_ids_BL: Array, how: str) -> Array:
    """[B, D]: the last real token's state (right padding), or the mean over real tokens."""
    real_BL = segment_ids_BL > 0
    if how == "last":
        last_B = jnp.maximum(jnp.sum(real_BL, axis=1) - 1, 0)
        return jnp.take_along_axis(hidden_BLD, last_B[:, None, None], axis=1)[:, 0]
    if how == "mean":
        real_BL1 = real_BL[..., None].astype(hidden_BLD.dtype)
        count_B1 = jnp.maximum(jnp.sum(real_BL1, axis=1), 1)
        return jnp.sum(hidden_BLD * real_BL1, axis=1) / count_B1
    raise ValueError(f"loss.pooling: {how!r} is not 'last' or 'mean'")


def init_head(d_model: int, n_classes: int) -> dict[str, Array]:
    """The linear head at zero: uniform predictions at step 0 (see the module docstring)."""
    return {"w": jnp.zeros((d_model, n_classes), jnp.float32), "b": jnp.zeros(n_classes)}


HEAD_AXES = {"w": P("embed", None), "b": P(None)}


def head_logits(head: PyTree, pooled_BD: Array) -> Array:
    """[B, C] class logits of the pooled states (float32 whatever the model's dtype)."""
    return pooled_BD.astype(jnp.float32) @ head["w"] + head["b"]


def label_token_scores(
    model: Any, params: PyTree, frozen: PyTree, batch: Batch, key: Any = None
) -> Array:
    """[B, C] sum over j of log p(verbaliser token j | prompt, earlier verbaliser tokens)."""
    B, C = batch["inputs"].shape[:2]
    flat = lambda x: x.reshape(B * C, *x.shape[2:])  # noqa: E731
    out = model_forward(
        model,
        params,
        frozen,
        flat(batch["inputs"]),
        positions_BL=flat(batch["positions"]),
        segment_ids_BL=flat(batch["segment_ids"]),
        dropout_key=key,
        return_logits=False,
    )
    at_NM = flat(batch["score_at"])
    hidden_NMD = jnp.take_along_axis(out.hidden_BLD, at_NM[..., None], axis=1)
    weights = model_params(params, frozen)  # the output layer (CSE'd under jit)
    logp_NMV = jax.nn.log_softmax(unembed(model, weights, hidden_NMD).astype(jnp.float32))
    picked_NM = jnp.take_along_axis(logp_NMV, flat(batch["score_ids"])[..., None], -1)[..., 0]
    return jnp.sum(picked_NM * flat(batch["score_mask"]), axis=-1).reshape(B, C)


@dataclasses.dataclass(frozen=True)
class ClassificationLoss(Loss):
    """Softmax cross-entropy over the labels' scores (linear head or label tokens)."""

    model: Any  # ModelConfig of the decoder
    labels: tuple[str, ...]
    head: str = "linear"
    pooling: str = "last"
    name = "classification"

    @classmethod
    def from_config(cls, cfg: ClassificationLossConfig, model: Any) -> ClassificationLoss:
        if len(cfg.labels) < 2:
            raise ValueError(
                "loss.labels: the classification loss needs the label set; set it, or let "
                "llm.data.resolve_labels(cfg) fill it from data.format=classification data"
            )
        return cls(model, tuple(cfg.labels), cfg.head, cfg.pooling)

    @property
    def batch_axes(self) -> Mapping[str, tuple[str | None, ...]]:  # type: ignore[override]
        return TOKEN_AXES if self.head == "label_tokens" else LINEAR_AXES

    def components(self, model: Any) -> dict[str, Component]:
        """The linear head "classifier" [D, C] (none for label-token scoring)."""
        if self.head != "linear":
            return {}
        n = len(self.labels)
        return {HEAD: Component(build=lambda key: init_head(model.d_model, n), axes=HEAD_AXES)}

    def scores(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any = None) -> Array:
        """[B, C] class scores (logits of the softmax over labels)."""
        if self.head == "label_tokens":
            return label_token_scores(self.model, params, frozen, batch, key)
        out = model_forward(
            self.model,
            params,
            frozen,
            batch["inputs"],
            positions_BL=batch["positions"],
            segment_ids_BL=batch["segment_ids"],
            dropout_key=key,
            return_logits=False,
        )
        head = {**frozen.get(HEAD, {}), **params.get(HEAD, {})}
        return head_logits(head, pool(out.hidden_BLD, batch["segment_ids"], self.pooling))

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        scores_BC = self.scores(params, frozen, batch, key)
        logp_BC = jax.nn.log_softmax(scores_BC, axis=-1)
        label_B, w_B = batch["label"], batch["weight"].astype(jnp.float32)
        ce_B = -jnp.take_along_axis(logp_BC, label_B[:, None], axis=-1)[:, 0]
        hit_B = (jnp.argmax(scores_BC, axis=-1) == label_B).astype(jnp.float32)
        total = jnp.sum(ce_B * w_B)
        return LossOutput(total, jnp.sum(w_B), {"ce": total, "accuracy": jnp.sum(hit_B * w_B)})

    @functools.cached_property
    def _scores(self) -> Callable[[PyTree, PyTree, Batch], Array]:
        return jax.jit(lambda p, f, b: self.scores(p, f, b))

    def evaluate(
        self,
        params: PyTree,
        frozen: PyTree,
        batches: Iterable[dict[str, np.ndarray]],
        *,
        tokenizer: Any = None,
        max_batches: int | None = None,
        put: Put | None = None,
    ) -> dict[str, Any]:
        """loss (mean cross-entropy), accuracy, macro_f1, f1/<label>, confusion, examples."""
        del tokenizer
        put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
        scores, labels, n = [], [], 0
        for batch in itertools.islice(batches, max_batches):
            keep = np.asarray(batch["weight"]) > 0
            scores.append(np.asarray(self._scores(params, frozen, put(batch)))[keep])
            labels.append(np.asarray(batch["label"])[keep])
            n += 1
        return evaluate_scores(np.concatenate(scores), np.concatenate(labels), self.labels, n)

    def summary(self, metrics: Mapping[str, Any]) -> str:
        return f"val loss {metrics['loss']:.4f}\n" + report(dict(metrics), self.labels)


def evaluate_scores(
    scores_NC: np.ndarray, labels_N: np.ndarray, names: tuple[str, ...], batches: int = 0
) -> dict[str, Any]:
    """Mean cross-entropy of `scores_NC` against `labels_N`, and the classification metrics."""
    if len(labels_N) == 0:
        raise ValueError("classification evaluation saw no examples")
    shifted = scores_NC - scores_NC.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-logp[np.arange(len(labels_N)), labels_N].mean())
    metrics = classification_metrics(labels_N, scores_NC.argmax(-1), names)
    return {"loss": loss, **metrics, "weight": float(len(labels_N)), "batches": batches}

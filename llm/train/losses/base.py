"""What a loss is: a pure function of (params, frozen, batch, dropout key), nothing else.

The train step (llm/train/step.py) knows nothing about objectives. A loss returns a
`LossOutput` holding *sums* over the examples it saw and the weight they carry (tokens for
language modelling, pairs for preference losses), so that gradient accumulation over
micro-batches adds sums and divides once: the result equals the big batch exactly (up to
float rounding order), even when micro-batches hold different numbers of unmasked tokens.

Besides the function itself a loss declares:
  * `batch_axes`: every batch leaf it reads with its logical axes, e.g. "inputs":
    ("batch", "length") or "chosen_rejected": ("batch", None, "length"). The batch is
    sharded leaf by leaf from these through the one rules table, so `[B]`, `[B, 2, L]` and
    `[B, G, L]` leaves lay out correctly on every mesh preset; a leaf it does not declare is
    an error, never silently dropped.
  * `components`: extra trees it scores with (a classification, value or reward head),
    built beside the decoder in every run that uses the loss (`llm.train.build.run_trainable`).
  * `reference`: True when it scores against the frozen reference policy (DPO, KTO, PPO's
    and GRPO's KL), which the run then keeps (`llm.train.trainable.reference_forward`).
  * `evaluate`: its validation metrics. The default is the mean loss and metrics over the
    validation batches; language-model losses add perplexity and bits per byte.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from llm.train.trainable import Component
from llm.typing import Array, PyTree

Batch = dict[str, Array]
BatchAxes = Mapping[str, tuple[str | None, ...]]
Put = Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LossOutput:
    """Sums over the examples of one (micro-)batch; the step divides by the total weight.

    total:   scalar, sum of per-example losses that gradients flow through (aux losses in).
    weight:  scalar, how many examples `total` sums over (unmasked tokens, pairs, groups).
    metrics: scalar sums to report, divided by the same total weight (e.g. "ce", "z_loss").
    """

    total: Array
    weight: Array
    metrics: dict[str, Array]


jax.tree_util.register_dataclass(
    LossOutput, data_fields=["total", "weight", "metrics"], meta_fields=[]
)

LossFn = Callable[[PyTree, PyTree, Batch, Any], LossOutput]


class Loss(abc.ABC):
    """Base of every loss: subclasses are frozen dataclasses holding their config.

    `__call__(params, frozen, batch, dropout_key)` is the objective (dropout_key None means
    deterministic, as in evaluation). Subclasses set `name` and `batch_axes`.
    """

    name: ClassVar[str] = ""
    batch_axes: ClassVar[BatchAxes] = types.MappingProxyType({})
    reference: ClassVar[bool] = False  # reads frozen["reference"] (see the module docstring)

    @abc.abstractmethod
    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        """The objective's sums over one (micro-)batch."""

    @functools.cached_property
    def _eval_sums(self) -> Callable[[PyTree, PyTree, Batch], LossOutput]:
        return jax.jit(lambda p, f, b: self(p, f, b, None))

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
        """Mean loss and metrics over `batches` (weighted like training): {"loss", ...}."""
        del tokenizer
        put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
        total, n = None, 0
        for batch in itertools.islice(batches, max_batches):
            out = self._eval_sums(params, frozen, put(batch))
            total = out if total is None else jax.tree.map(jnp.add, total, out)
            n += 1
        if total is None or float(total.weight) == 0:
            raise ValueError(f"evaluation of loss {self.name!r} saw no weighted examples")
        weight = float(total.weight)
        metrics = {k: float(v) / weight for k, v in total.metrics.items()}
        return {"loss": float(total.total) / weight, **metrics, "weight": weight, "batches": n}

    def components(self, model: Any) -> dict[str, Component]:
        """Extra trees this loss scores with, built beside the decoder in every run that uses
        it (a classification, value or reward head): {name: Component}, merged into the run's
        `Trainable` by `llm.train.build.run_trainable`, so they exist under full fine-tuning,
        `train.freeze` and any `peft.method` alike. `model` is the run's ModelConfig."""
        del model
        return {}

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        """Metrics computed from a training step's (e.g. perplexity from the loss); none here."""
        return {}

    def summary(self, metrics: Mapping[str, float]) -> str:
        """One log line of validation metrics."""
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("batches",))


def check_batch_leaves(loss: Loss, batch: Mapping[str, Any], where: str = "batch") -> None:
    """The batch holds exactly the loss's declared leaves, each of the declared rank."""
    have, want = set(batch), set(loss.batch_axes)
    if have != want:
        extra = ", ".join(sorted(have - want)) or "none"
        missing = ", ".join(sorted(want - have)) or "none"
        raise ValueError(
            f"{where} does not fit loss {loss.name!r}: leaves it does not declare: {extra}; "
            f"leaves it needs but the batch lacks: {missing}"
        )
    for key, axes in loss.batch_axes.items():
        if np.ndim(batch[key]) != len(axes):
            raise ValueError(
                f"{where}[{key!r}] has shape {np.shape(batch[key])}, loss {loss.name!r} "
                f"declares {len(axes)} axes {axes}"
            )

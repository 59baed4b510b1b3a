"""Knowledge distillation: a student trained on a frozen teacher's next-token distribution.

    loss:
      name: distill
      teacher: models/smollm2     # any model directory `llm.checkpoint.load_model` reads
      temperature: 2.0
      alpha: 0.5
      direction: forward          # KL(teacher || student); reverse: KL(student || teacher)

Per unmasked token, with p = softmax(teacher / T) and q = softmax(student / T):
    loss = alpha * T^2 * KL + (1 - alpha) * CE(student, next token)
  * Logit distillation (Hinton et al. 2015, arXiv:1503.02531, sec. 2): soft targets at
    temperature T, the KD term multiplied by T^2 so its gradients keep their size as T
    changes. Forward KL(p || q) is the paper's (mean-seeking); reverse KL(q || p) is
    mode-seeking (MiniLLM, Gu et al. 2023, arXiv:2306.08543). The hard-label term is at T = 1.
  * The teacher is a frozen component "teacher" of the run (llm/train/trainable.py): loaded
    once from `loss.teacher` with `llm.checkpoint.load_model`, placed in its shards with its
    own logical axes, given no gradient and no optimiser state. Its architecture may differ
    from the student's; its vocabulary size must equal the student's (refused otherwise),
    as the two distributions are compared id by id.
  * Top-k cached teacher logits (`loss.top_k = k`, no teacher at training time):
    `write_teacher_topk` runs the teacher once over a token dataset and stores, per
    position, its k most likely ids with their log-probabilities at temperature T;
    `TopKBatches` replays them as batches with the leaves "teacher_ids" and "teacher_logp".
    The teacher distribution is renormalised over k + 1 buckets: the k ids and a tail
    bucket holding the rest of its mass (1 - sum of the k probabilities); the student's
    distribution is coarsened into the same buckets (its tail: logsumexp over the other
    ids). The loss is the exact KL of these coarsened distributions, a lower bound of the
    full KL (data processing), and equal to it when k is the vocabulary size.
  * Sequence-level KD (Kim & Rush 2016, arXiv:1606.07947, sec. 3.2): `sequence_kd`
    (llm/compress/seqkd.py: it runs the inference engine, which training never imports) writes
    the teacher's greedy answers to prompts as SFT chat JSONL (llm/data/sft.py), on which
    the student is then fine-tuned with plain `loss.name=sft`. Kim & Rush decode with beam
    search (width 5); greedy is beam width 1.

Validation reports the student's language-model metrics (cross-entropy, perplexity, bits
per byte: `CausalLMLoss.evaluate`), so a KD student and a hard-label student compare in the
same units.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm.checkpoint import load_model, model_config_of
from llm.config import ModelConfig
from llm.config.loss import DistillLossConfig
from llm.model import forward, logical_axes
from llm.ops.cross_entropy import token_losses
from llm.train.losses.base import Batch, Loss, LossOutput, Put
from llm.train.losses.causal_lm import LM_AXES, LM_LEAVES, CausalLMLoss
from llm.train.trainable import Component, model_forward
from llm.typing import Array, PyTree

TEACHER = "teacher"  # the frozen component holding the teacher's params
TOPK_AXES = ("batch", "length", None)  # "teacher_ids" / "teacher_logp": [B, L, k]
LOG_TAIL_FLOOR = -70.0  # log of the teacher's tail mass when rounding leaves none (~4e-31)


def _kl(logp: Array, logq: Array, direction: str) -> Array:
    """KL over the last axis: forward KL(p || q), reverse KL(q || p); log-probabilities in."""
    if direction == "reverse":
        logp, logq = logq, logp
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kd_token_loss(
    student_BLV: Array, teacher_BLV: Array, temperature: float, direction: str
) -> Array:
    """T^2 KL between teacher and student at temperature T, per token: [B, L]."""
    logq = jax.nn.log_softmax(student_BLV.astype(jnp.float32) / temperature, axis=-1)
    logp = jax.nn.log_softmax(teacher_BLV.astype(jnp.float32) / temperature, axis=-1)
    return temperature**2 * _kl(logp, logq, direction)


def kd_topk_token_loss(
    student_BLV: Array, ids_BLk: Array, logp_BLk: Array, temperature: float, direction: str
) -> Array:
    """T^2 KL of the k + 1 bucket distributions (module docstring), per token: [B, L].

    `logp_BLk`: the teacher's log-probabilities at temperature T of the ids `ids_BLk`."""
    B, L, V = student_BLV.shape
    z_BLV = student_BLV.astype(jnp.float32) / temperature
    lse_BL1 = jax.nn.logsumexp(z_BLV, axis=-1, keepdims=True)
    logq_BLk = jnp.take_along_axis(z_BLV, ids_BLk, axis=-1) - lse_BL1
    logp_BLk = logp_BLk.astype(jnp.float32)
    if ids_BLk.shape[-1] < V:  # static: with k = V there is no tail
        b, l = jnp.arange(B)[:, None, None], jnp.arange(L)[None, :, None]
        rest_BLV = z_BLV.at[b, l, ids_BLk].set(-jnp.inf)
        logq_tail = jax.nn.logsumexp(rest_BLV, axis=-1, keepdims=True) - lse_BL1
        # log(1 - sum p_k) as log(-expm1(log sum p_k)): exact for a small tail, where
        # 1 - sum would cancel to rounding noise; an empty tail (sum >= 1) hits the floor
        mass_BL1 = jnp.minimum(jax.nn.logsumexp(logp_BLk, axis=-1, keepdims=True), 0.0)
        logp_tail = jnp.maximum(jnp.log(-jnp.expm1(mass_BL1)), LOG_TAIL_FLOOR)
        logq_BLk = jnp.concatenate([logq_BLk, logq_tail], axis=-1)
        logp_BLk = jnp.concatenate([logp_BLk, logp_tail], axis=-1)
    return temperature**2 * _kl(logp_BLk, logq_BLk, direction)


def teacher_logits(teacher: ModelConfig, params: PyTree, batch: Batch) -> Array:
    """The frozen teacher's logits [B, L, V] for the batch (deterministic, no gradient)."""
    out = forward(
        teacher,
        jax.lax.stop_gradient(params),
        batch["inputs"],
        positions_BL=batch.get("positions"),
        segment_ids_BL=batch.get("segment_ids"),
    )
    return jax.lax.stop_gradient(out.logits_BLV)


def teacher_model(directory: str, student: ModelConfig) -> ModelConfig:
    """The teacher's ModelConfig from its directory; its vocabulary must be the student's."""
    teacher = model_config_of(directory).model
    if teacher.vocab_size != student.vocab_size:
        raise ValueError(
            f"loss.teacher: {directory} has vocab_size={teacher.vocab_size} but the student "
            f"has model.vocab_size={student.vocab_size}; distillation compares the two "
            "distributions id by id, so both must use the same tokenizer"
        )
    return teacher


@dataclasses.dataclass(frozen=True)
class DistillLoss(Loss):
    """alpha T^2 KL(teacher, student) + (1 - alpha) CE (module docstring for the formula)."""

    model: ModelConfig  # the student
    teacher: ModelConfig | None = None  # the teacher's architecture (None: cached top-k)
    teacher_dir: str | None = None  # where its weights are loaded from
    temperature: float = 2.0
    alpha: float = 0.5
    direction: str = "forward"
    top_k: int = 0
    name = "distill"

    @classmethod
    def from_config(cls, cfg: DistillLossConfig, model: ModelConfig) -> DistillLoss:
        teacher = None if cfg.teacher is None else teacher_model(cfg.teacher, model)
        return cls(model, teacher, cfg.teacher, cfg.temperature, cfg.alpha, cfg.direction,
                   cfg.top_k)  # fmt: skip

    @property
    def batch_axes(self) -> Mapping[str, tuple[str | None, ...]]:  # type: ignore[override]
        axes = {k: LM_AXES for k in LM_LEAVES}
        if self.top_k:
            axes.update(teacher_ids=TOPK_AXES, teacher_logp=TOPK_AXES)
        return types.MappingProxyType(axes)

    @functools.cached_property
    def teacher_params(self) -> PyTree:
        """The teacher's weights, read once per loss object (by `components`, never traced)."""
        return load_model(self.teacher_dir).params

    def components(self, model: Any) -> dict[str, Component]:
        if self.teacher is None:
            return {}
        weights = self.teacher_params  # read here, outside any trace, once
        build = lambda key: weights  # noqa: E731 (jit takes the closed-over arrays as arguments)
        return {TEACHER: Component(build, logical_axes(self.teacher), trainable=False)}

    def __call__(self, params: PyTree, frozen: PyTree, batch: Batch, key: Any) -> LossOutput:
        out = model_forward(self.model, params, frozen, batch["inputs"],
                            positions_BL=batch.get("positions"),
                            segment_ids_BL=batch.get("segment_ids"), dropout_key=key)  # fmt: skip
        s_BLV, mask_BL = out.logits_BLV, batch["loss_mask"].astype(jnp.float32)
        T, d = self.temperature, self.direction
        if self.top_k:
            kd_BL = kd_topk_token_loss(s_BLV, batch["teacher_ids"], batch["teacher_logp"], T, d)
        else:
            if TEACHER not in frozen:
                raise ValueError(f"loss 'distill' needs the frozen component {TEACHER!r}; "
                                 "build the run with run_trainable (it adds it)")  # fmt: skip
            t_BLV = teacher_logits(self.teacher, frozen[TEACHER], batch)
            kd_BL = kd_token_loss(s_BLV, t_BLV, T, d)
        V = s_BLV.shape[-1]
        _, ce_T = token_losses(s_BLV.reshape(-1, V), batch["targets"].reshape(-1))
        ce_BL = ce_T.reshape(mask_BL.shape)
        loss_BL = self.alpha * kd_BL + (1.0 - self.alpha) * ce_BL
        weight = jnp.sum(mask_BL)
        total = jnp.sum(loss_BL * mask_BL)
        metrics = {"ce": jnp.sum(ce_BL * mask_BL), "kd": jnp.sum(kd_BL * mask_BL)}
        for aux, value in out.aux_losses.items():
            total = total + value * weight
            metrics[aux] = value * weight
        return LossOutput(total, weight, metrics)

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
        """The student's loss (cross-entropy, nats/token), ppl and bpb on the LM leaves.
        Held-out batches need no teacher leaves: with cached top-k, `put` (which checks the
        leaves against this loss) gets placeholders, dropped once placed."""
        put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})

        def lm_put(batch: dict[str, np.ndarray]) -> dict[str, Array]:
            lm = {k: batch[k] for k in LM_LEAVES}
            if self.top_k:
                shape = (*np.shape(lm["inputs"]), self.top_k)
                lm |= {"teacher_ids": np.zeros(shape, np.int32),
                       "teacher_logp": np.zeros(shape, np.float32)}  # fmt: skip
            return {k: v for k, v in put(lm).items() if k in LM_LEAVES}

        return CausalLMLoss(self.model).evaluate(
            params, frozen, batches, tokenizer=tokenizer, max_batches=max_batches, put=lm_put
        )

    def derived_metrics(self, train_metrics: Mapping[str, float]) -> dict[str, float]:
        """Perplexity of the hard-label cross-entropy (the loss itself mixes in the KD term)."""
        return {"ppl": float(np.exp(min(float(train_metrics["ce"]), 700.0)))}

    def summary(self, metrics: Mapping[str, float]) -> str:
        return CausalLMLoss(self.model).summary(metrics)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _topk(teacher: ModelConfig, k: int, temperature: float, params: PyTree, batch: Batch):
    logp_BLV = jax.nn.log_softmax(teacher_logits(teacher, params, batch) / temperature, axis=-1)
    logp_BLk, ids_BLk = jax.lax.top_k(logp_BLV, k)
    return ids_BLk.astype(jnp.int32), logp_BLk


def write_teacher_topk(
    teacher: ModelConfig,
    params: PyTree,
    batches: Iterable[dict[str, np.ndarray]],
    out: str | Path,
    *,
    k: int,
    temperature: float,
) -> Path:
    """Runs the teacher over `batches` (a finite iterable of LM batches) once and writes them
    with its top-k ids and log-probabilities at `temperature` to the .npz file `out`."""
    if not 0 < k <= teacher.vocab_size:
        raise ValueError(f"k={k} must be in [1, vocab_size={teacher.vocab_size}]")
    rows = []
    for batch in tqdm(batches, desc="teacher top-k", unit="batch"):
        lm = {key: np.asarray(batch[key]) for key in LM_LEAVES}
        ids, logp = _topk(teacher, k, float(temperature), params, lm)
        rows.append({**lm, "teacher_ids": np.asarray(ids), "teacher_logp": np.asarray(logp)})
    if not rows:
        raise ValueError("write_teacher_topk: `batches` is empty")
    arrays = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    path = Path(out)
    np.savez(path, temperature=np.float32(temperature), k=np.int32(k), **arrays)
    return path


class TopKBatches:
    """The batches of a `write_teacher_topk` file, cycled, resumable like `make_batches`."""

    def __init__(self, path: str | Path, *, temperature: float, top_k: int):
        with np.load(path) as f:
            self.arrays = {k: f[k] for k in (*LM_LEAVES, "teacher_ids", "teacher_logp")}
            stored_t, stored_k = float(f["temperature"]), int(f["k"])
        if not np.isclose(stored_t, temperature) or stored_k != top_k:
            raise ValueError(
                f"{path} holds the teacher's top-{stored_k} at temperature {stored_t}, but the "
                f"loss has top_k={top_k}, temperature={temperature}; rewrite the cache or match"
            )
        self.n, self.index = len(self.arrays["inputs"]), 0

    def __iter__(self) -> TopKBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        i, self.index = self.index % self.n, self.index + 1
        return {k: v[i] for k, v in self.arrays.items()}

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["next_batch"])

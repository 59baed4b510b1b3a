"""The `loss:` section: a tagged union of per-loss configs, chosen by `loss.name`.

    loss:
      name: causal_lm        # picks CausalLMLossConfig; its own fields follow
      z_loss: 1.0e-4

Each loss owns its fields, so a DPO beta never sits beside a z-loss coefficient. A new loss
adds a `@config_class` here with `name: Literal["its_name"]`, joins `LossConfig`, and
registers its builder in `llm.train.losses` (the names must agree; a test checks).
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic

from llm.config.align import (
    ALIGN_LOSS_CONFIGS,
    CDPOLossConfig,
    DPOLossConfig,
    GRPOLossConfig,
    IPOLossConfig,
    KTOLossConfig,
    ORPOLossConfig,
    PPOLossConfig,
    RewardLossConfig,
    SimPOLossConfig,
)
from llm.config.base import check, config_class


@config_class
class CausalLMLossConfig:
    """Next-token cross-entropy over the batch's `loss_mask` (pretraining, SFT)."""

    name: Literal["causal_lm"] = "causal_lm"  # the loss this section configures
    z_loss: float = 0.0  # weight of the z-loss log(Z)^2 per token (PaLM uses 1e-4)
    label_smoothing: float = 0.0  # probability mass spread uniformly over the vocabulary
    chunk_size: int | None = None  # tokens per chunk of chunked cross-entropy; null = plain

    def __post_init__(self) -> None:
        check(self.z_loss >= 0, "z_loss", "must be non-negative")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        check(
            self.chunk_size is None or self.chunk_size > 0, "chunk_size", "must be positive or null"
        )


@config_class
class SFTLossConfig:
    """Supervised fine-tuning: next-token cross-entropy on assistant tokens only (the batch's
    `loss_mask`, built by llm/data/sft.py); validation adds assistant-token accuracy."""

    name: Literal["sft"] = "sft"  # the loss this section configures
    z_loss: float = 0.0  # weight of the z-loss log(Z)^2 per token (PaLM uses 1e-4)
    label_smoothing: float = 0.0  # probability mass spread uniformly over the vocabulary
    chunk_size: int | None = None  # tokens per chunk of chunked cross-entropy; null = plain

    def __post_init__(self) -> None:
        CausalLMLossConfig.__post_init__(self)


@config_class
class Seq2SeqLossConfig:
    """Encoder-decoder target cross-entropy (llm/train/losses/seq2seq.py): T5 span corruption
    or (source, target) pairs; validation adds token accuracy and bits per target byte."""

    name: Literal["seq2seq"] = "seq2seq"  # the loss this section configures
    z_loss: float = 0.0  # weight of the z-loss log(Z)^2 per target token
    label_smoothing: float = 0.0  # probability mass spread uniformly over the vocabulary

    def __post_init__(self) -> None:
        check(self.z_loss >= 0, "z_loss", "must be non-negative")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


@config_class
class MLMLossConfig:
    """Masked language modelling (llm/train/losses/mlm.py): cross-entropy on the tokens
    data.objective=mlm selected; validation adds masked-token accuracy. Encoder only."""

    name: Literal["mlm"] = "mlm"  # the loss this section configures
    label_smoothing: float = 0.0  # probability mass spread uniformly over the vocabulary

    def __post_init__(self) -> None:
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


ClassifierHead = Literal["linear", "label_tokens"]
Pooling = Literal["last", "mean"]


@config_class
class ClassificationLossConfig:
    """Sequence classification (llm/train/losses/classification.py): cross-entropy over a
    label set, scored by a linear head on the pooled hidden state or by the log-probability
    of each label's verbaliser tokens after the prompt."""

    name: Literal["classification"] = "classification"  # the loss this section configures
    labels: tuple[str, ...] = ()  # the label set in class order; empty = sorted train labels
    head: ClassifierHead = "linear"  # linear: new [D, C] head; label_tokens: LM scores labels
    pooling: Pooling = "last"  # linear head input: last real token, or mean over real tokens
    prompt: str = "{text}"  # how a record's text becomes the model input ({text} placeholder)
    verbalizer: str = " {label}"  # label_tokens: the tokens scored after the prompt ({label})

    def __post_init__(self) -> None:
        check(len(set(self.labels)) == len(self.labels), "labels", "names a label twice")
        check(len(self.labels) != 1, "labels", "one label is no classification; give 2 or more")
        check(all(self.labels), "labels", "a label is the empty string")
        check("{text}" in self.prompt, "prompt", "must contain the placeholder {text}")
        check("{label}" in self.verbalizer, "verbalizer", "must contain the placeholder {label}")
        for field, text in (("prompt", self.prompt), ("verbalizer", self.verbalizer)):
            try:
                text.format(text="", label="")
            except (KeyError, IndexError, ValueError) as err:
                check(
                    False,
                    field,
                    f"{text!r} is not a format string with {{text}}/{{label}}: {err!r}",
                )


KDDirection = Literal["forward", "reverse"]


@config_class
class DistillLossConfig:
    """Knowledge distillation (llm/train/losses/distill.py): alpha T^2 KL between teacher and
    student at temperature T plus (1 - alpha) hard-label cross-entropy (Hinton et al. 2015)."""

    name: Literal["distill"] = "distill"  # the loss this section configures
    teacher: str | None = None  # teacher model directory (run, convert or HF); null = cached top-k
    temperature: float = 2.0  # T: both distributions are softened by T; the KD term scaled by T^2
    alpha: float = 0.5  # weight of the KD term; 1 - alpha weights the hard-label cross-entropy
    direction: KDDirection = "forward"  # forward: KL(teacher || student); reverse: KL(s || t)
    top_k: int = 0  # > 0: batches carry the teacher's cached top-k (teacher_ids, teacher_logp)

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", "must be positive")
        check(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        check(self.top_k >= 0, "top_k", "must be non-negative (0 = run the teacher)")
        check(
            (self.teacher is None) != (self.top_k == 0),
            "teacher",
            "give exactly one of loss.teacher (a model directory, run every step) and "
            "loss.top_k > 0 (the batches carry the teacher's cached top-k)",
        )


DEFAULT_LOSS = "causal_lm"  # what a `loss:` section without `name` configures


def _tag(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("name", DEFAULT_LOSS)
    return getattr(value, "name", None)


# the tagged union: pydantic picks the member by `name` and reports unknown names
LossConfig = Annotated[
    Annotated[CausalLMLossConfig, pydantic.Tag("causal_lm")]
    | Annotated[SFTLossConfig, pydantic.Tag("sft")]
    | Annotated[MLMLossConfig, pydantic.Tag("mlm")]
    | Annotated[Seq2SeqLossConfig, pydantic.Tag("seq2seq")]
    | Annotated[ClassificationLossConfig, pydantic.Tag("classification")]
    | Annotated[DistillLossConfig, pydantic.Tag("distill")]
    | Annotated[RewardLossConfig, pydantic.Tag("reward")]
    | Annotated[DPOLossConfig, pydantic.Tag("dpo")]
    | Annotated[CDPOLossConfig, pydantic.Tag("cdpo")]
    | Annotated[IPOLossConfig, pydantic.Tag("ipo")]
    | Annotated[SimPOLossConfig, pydantic.Tag("simpo")]
    | Annotated[ORPOLossConfig, pydantic.Tag("orpo")]
    | Annotated[KTOLossConfig, pydantic.Tag("kto")]
    | Annotated[PPOLossConfig, pydantic.Tag("ppo")]
    | Annotated[GRPOLossConfig, pydantic.Tag("grpo")],
    pydantic.Discriminator(_tag),
]
LOSS_CONFIGS: dict[str, type] = {
    "causal_lm": CausalLMLossConfig,
    "sft": SFTLossConfig,
    "mlm": MLMLossConfig,
    "seq2seq": Seq2SeqLossConfig,
    "classification": ClassificationLossConfig,
    "distill": DistillLossConfig,
    **ALIGN_LOSS_CONFIGS,
}
RL_LOSSES = ("ppo", "grpo")  # trained by the RL loop on rollouts (llm/align/rl.py)

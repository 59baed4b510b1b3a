"""Which data, objective, loss and model go together: refused before the first step.

Each check names the config field that is wrong and what would happen otherwise (a model
trained on batches its loss does not read, an encoder learning to copy the token it scores,
a mask id or sentinel outside the vocabulary). `train()` and the RL loop call them once.
"""

from __future__ import annotations

from typing import Any

from llm.config import LOSS_CONFIGS, Config, check
from llm.data.objectives import mlm_mask_id
from llm.data.seq2seq import check_seq2seq_data
from llm.train.losses import Loss

ENCODER_LOSSES = ("mlm", "classification", "reward")  # score no token the encoder reads


def check_encoder_loss(cfg: Config, loss_name: str) -> None:
    """A bidirectional encoder (`model.causal=false`) sees every token, the next one and a
    response's own tokens too: next-token, distillation, preference, RL and seq2seq losses
    would learn to copy what they score. Losses of ours outside ENCODER_LOSSES are refused."""
    if cfg.model.causal:
        return
    check(
        loss_name in ENCODER_LOSSES or loss_name not in LOSS_CONFIGS,
        "model.causal",
        f"model.causal=false sees every token, the next one too: loss.name={loss_name!r} "
        f"would learn to copy what it scores; an encoder trains with {list(ENCODER_LOSSES)}",
    )
    head = getattr(cfg.loss, "head", "linear")
    check(
        loss_name != "classification" or head == "linear",
        "loss.head",
        f"{head!r} scores the label tokens, which model.causal=false sees in its input; "
        "use loss.head=linear with an encoder",
    )


def check_run_data(cfg: Config, tokenizer: Any, loss: Loss) -> None:
    """Data that would train to NaN or to nothing is refused before the first step."""
    check(
        cfg.data.objective != "mlm" or loss.name != "causal_lm",
        "data.objective",
        "'mlm' makes masked-token batches, but loss.name='causal_lm' trains a causal decoder "
        "to predict the next token; use data.objective=causal with this loss",
    )
    check(
        loss.name != "mlm" or cfg.data.objective == "mlm",
        "data.objective",
        f"is {cfg.data.objective!r}, but loss.name='mlm' needs masked-token batches: set "
        "data.objective=mlm",
    )
    check_encoder_loss(cfg, loss.name)
    check(
        not cfg.model.prefix_lm or loss.name == "sft",
        "model.prefix_lm",
        f"needs loss.name=sft (its batches carry the prompt as the prefix); loss.name="
        f"{loss.name!r} passes no prefix",
    )
    check_seq2seq_data(cfg, tokenizer)  # span corruption / pairs vs arch, loss, sentinels
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"vocabulary ({tokenizer.vocab_size} ids from data.tokenizer={cfg.data.tokenizer!r})"
        )
    if cfg.data.objective == "mlm" and mlm_mask_id(tokenizer) >= cfg.model.vocab_size:
        raise ValueError(
            f"data.objective=mlm writes mask id {mlm_mask_id(tokenizer)} (data.tokenizer="
            f"{cfg.data.tokenizer!r} has no [MASK] below it), outside model.vocab_size="
            f"{cfg.model.vocab_size}: raise model.vocab_size or use a tokenizer with a mask token"
        )

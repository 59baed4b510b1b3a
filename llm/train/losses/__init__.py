"""The loss registry: `loss.name` in the config picks a builder registered here.

    loss = make_loss(cfg)                          # from cfg.loss and cfg.model
    out = loss(params, frozen, batch, key)         # LossOutput of sums
    metrics = loss.evaluate(params, frozen, val_batches, tokenizer=tok)

A loss written in Python (a notebook, a test) needs no registration: pass the object to
`llm.train.train(cfg, loss=...)`. Registering makes it reachable from YAML: add its config
class to `llm/config/loss.py` and `register_loss("its_name", builder)` here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm.ops.cross_entropy import (
    cross_entropy_chunked,
    cross_entropy_plain,
    token_losses,
)
from llm.train.losses.base import Batch, Loss, LossFn, LossOutput, check_batch_leaves
from llm.train.losses.causal_lm import CausalLMLoss
from llm.train.losses.classification import ClassificationLoss
from llm.train.losses.distill import DistillLoss
from llm.train.losses.dpo import CDPOLoss, DPOLoss, IPOLoss, ORPOLoss, SimPOLoss
from llm.train.losses.grpo import GRPOLoss
from llm.train.losses.kto import KTOLoss
from llm.train.losses.mlm import MLMLoss
from llm.train.losses.ppo import PPOLoss
from llm.train.losses.reward import RewardLoss
from llm.train.losses.seq2seq import Seq2SeqLoss
from llm.train.losses.sft import SFTLoss

Builder = Callable[[Any, Any], Loss]  # (loss config section, ModelConfig) -> Loss
LOSSES: dict[str, Builder] = {}


def register_loss(name: str, builder: Builder) -> None:
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = builder


register_loss("causal_lm", CausalLMLoss.from_config)
register_loss("sft", SFTLoss.from_config)
register_loss("mlm", MLMLoss.from_config)
register_loss("seq2seq", Seq2SeqLoss.from_config)
register_loss("classification", ClassificationLoss.from_config)
register_loss("distill", DistillLoss.from_config)
register_loss("dpo", DPOLoss.from_config)
register_loss("cdpo", CDPOLoss.from_config)
register_loss("ipo", IPOLoss.from_config)
register_loss("simpo", SimPOLoss.from_config)
register_loss("orpo", ORPOLoss.from_config)
register_loss("kto", KTOLoss.from_config)
register_loss("ppo", PPOLoss.from_config)
register_loss("grpo", GRPOLoss.from_config)
register_loss("reward", RewardLoss.from_config)


# losses that add `ModelOutput.aux_losses` (an MoE's router losses) to their objective
ADDS_AUX_LOSSES = ("causal_lm", "sft", "mlm", "seq2seq", "distill")


def make_loss(cfg: Any) -> Loss:
    """The loss named by `cfg.loss.name`, configured from `cfg.loss` and `cfg.model`."""
    name = cfg.loss.name
    if name not in LOSSES:
        raise ValueError(f"loss.name: no loss {name!r} is registered ({sorted(LOSSES)})")
    moe = cfg.model.n_experts and (cfg.model.moe_lb_weight or cfg.model.moe_z_weight)
    if moe and name not in ADDS_AUX_LOSSES:  # the router losses would be silently dropped
        raise ValueError(
            f"model.moe_lb_weight / moe_z_weight: loss {name!r} does not add the model's "
            f"auxiliary losses (only {', '.join(ADDS_AUX_LOSSES)} do); set both to 0"
        )
    return LOSSES[name](cfg.loss, cfg.model)


__all__ = [
    "LOSSES",
    "Batch",
    "CDPOLoss",
    "CausalLMLoss",
    "ClassificationLoss",
    "DPOLoss",
    "DistillLoss",
    "GRPOLoss",
    "IPOLoss",
    "KTOLoss",
    "Loss",
    "LossFn",
    "LossOutput",
    "MLMLoss",
    "ORPOLoss",
    "PPOLoss",
    "RewardLoss",
    "SFTLoss",
    "Seq2SeqLoss",
    "SimPOLoss",
    "check_batch_leaves",
    "cross_entropy_chunked",
    "cross_entropy_plain",
    "make_loss",
    "register_loss",
    "token_losses",
]

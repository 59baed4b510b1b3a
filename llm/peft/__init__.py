"""Parameter-efficient fine-tuning: adapters trained beside a frozen decoder (docs/peft.md).

    trainable = llm.train.trainable.trainable_from_config(cfg)   # from the `peft:` section
    llm.train.train(cfg, trainable=trainable)                     # only the adapter is trained

An adapter is a component of the run's params / frozen trees, keyed like the decoder params
it adapts; `llm.train.trainable.model_params` applies it inside the loss through `ADAPTERS`
(component name -> apply function), so every loss works with it unchanged. This package
knows params and configs only (it imports llm.model and llm.config, never llm.train), so the
training code can build on it.
"""

from __future__ import annotations

from collections.abc import Callable

from llm.peft.lora import (
    NAME,
    SCALE_LEAF,
    apply_lora,
    find_targets,
    init_lora,
    lora_axes,
    merge,
    n_trainable,
    unmerge,
)
from llm.typing import PyTree

Adapter = Callable[[PyTree, PyTree], PyTree]  # (decoder tree, adapter tree) -> decoder tree
ADAPTERS: dict[str, Adapter] = {NAME: apply_lora}


def register_adapter(name: str, apply: Adapter) -> None:
    """Makes `model_params` apply component `name` to the decoder (later DoRA, IA3)."""
    if name == "model" or name in ADAPTERS:
        raise ValueError(f"adapter component {name!r} is already registered or is the decoder")
    ADAPTERS[name] = apply


__all__ = [
    "ADAPTERS",
    "NAME",
    "SCALE_LEAF",
    "Adapter",
    "apply_lora",
    "find_targets",
    "init_lora",
    "lora_axes",
    "merge",
    "n_trainable",
    "register_adapter",
    "unmerge",
]

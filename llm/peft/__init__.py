"""Parameter-efficient fine-tuning: adapters trained beside a frozen decoder (docs/peft.md).

    trainable = llm.train.trainable.trainable_from_config(cfg)   # from the `peft:` section
    llm.train.train(cfg, trainable=trainable)                     # only the adapter is trained

An adapter is a component of the run's params / frozen trees, keyed like the decoder params
it adapts; `llm.train.trainable.model_params` applies it inside the loss through `ADAPTERS`
(component name -> apply function), so every loss works with it unchanged. Each
`peft.method` is a `Method` in `METHODS`: how to build its component's tree and axes, which
of its leaves stay frozen, and how it is applied. This package knows params and configs only
(it imports llm.model and llm.config, never llm.train), so the training code can build on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from llm.config.peft import PeftConfig
from llm.peft import lora
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
ADAPTERS: dict[str, Adapter] = {}


@dataclasses.dataclass(frozen=True)
class Method:
    """One `peft.method`: the component it adds beside the frozen decoder.

    component: its name in the params / frozen trees (also its key in `ADAPTERS`).
    init: (peft config, decoder tree, decoder axes, key) -> (adapter tree, its logical axes);
      the decoder tree may be abstract (`ShapeDtypeStruct`s), and `init` runs under jit.
    axes: (peft config, decoder tree, decoder axes) -> the adapter's logical axes, no key.
    apply: (decoder tree, adapter tree) -> decoder tree, run inside the jitted loss.
    frozen: regexes on the adapter's own paths whose leaves are never trained (a scale).
    """

    component: str
    init: Callable[[PeftConfig, PyTree, PyTree, jax.Array], tuple[PyTree, PyTree]]
    axes: Callable[[PeftConfig, PyTree, PyTree], PyTree]
    apply: Adapter
    frozen: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method) -> None:
    """Makes `peft.method: name` build `method`'s component and `model_params` apply it."""
    if name in METHODS:
        raise ValueError(f"peft method {name!r} is already registered")
    register_adapter(method.component, method.apply)
    METHODS[name] = method


def register_adapter(name: str, apply: Adapter) -> None:
    """Makes `model_params` apply component `name` to the decoder."""
    if name == "model" or name in ADAPTERS:
        raise ValueError(f"adapter component {name!r} is already registered or is the decoder")
    ADAPTERS[name] = apply


register_method(
    "lora",
    Method(
        component=NAME,
        init=init_lora,
        axes=lambda cfg, model, axes: lora_axes(find_targets(cfg, model, axes)),
        apply=apply_lora,
        frozen=(SCALE_LEAF,),
    ),
)


__all__ = [
    "ADAPTERS",
    "METHODS",
    "NAME",
    "SCALE_LEAF",
    "Adapter",
    "Method",
    "apply_lora",
    "find_targets",
    "init_lora",
    "lora",
    "lora_axes",
    "merge",
    "n_trainable",
    "register_adapter",
    "register_method",
    "unmerge",
]

"""Parameter-efficient fine-tuning: adapters trained beside a frozen decoder (docs/peft.md).

    trainable = llm.train.trainable.trainable_from_config(cfg)   # from the `peft:` section
    llm.train.train(cfg, trainable=trainable)                     # only the adapter is trained

An adapter is a component of the run's params / frozen trees, keyed like the decoder params
it adapts; `llm.train.trainable.model_params` applies it inside the loss through `ADAPTERS`
(component name -> apply function), so every loss works with it unchanged. Each
`peft.method` is a `Method` in `METHODS`: how to build its component's tree and axes, which
of its leaves stay frozen, and how it is applied: merged into the decoder tree (`apply`, as
LoRA) or, for methods that change the forward pass and not the weights (prompt and prefix
tuning, bottleneck adapters), given to the model as `llm.model.extras.Extras` (`forward`,
collected in `FORWARD` and passed by `llm.train.trainable.model_forward`, which every loss
calls to run the decoder). This package knows params and configs only
(it imports llm.model and llm.config, never llm.train), so the training code can build on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from llm.config.peft import PeftConfig
from llm.model.extras import Extras
from llm.peft import adalora, adapters, dora, ia3, lora, prefix, prompt, qlora
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
ForwardHook = Callable[[PyTree], Extras]  # adapter tree -> what the forward pass adds
FORWARD: dict[str, ForwardHook] = {}


@dataclasses.dataclass(frozen=True)
class Method:
    """One `peft.method`: the component it adds beside the frozen decoder.

    component: its name in the params / frozen trees (also its key in `ADAPTERS`).
    init: (peft config, decoder tree, decoder axes, key) -> (adapter tree, its logical axes);
      the decoder tree may be abstract (`ShapeDtypeStruct`s), and `init` runs under jit.
    axes: (peft config, decoder tree, decoder axes) -> the adapter's logical axes, no key.
    apply: (decoder tree, adapter tree) -> decoder tree, run inside the jitted loss; None
      for a method that leaves the weights alone and sets `forward`.
    frozen: regexes on the adapter's own paths whose leaves are never trained (a scale).
    store: optional (peft config, decoder tree, decoder axes) -> (the decoder as the frozen
      tree stores it, its axes): QLoRA's quantised base. Pure jnp, run under jit on a
      concrete tree and on `ShapeDtypeStruct`s for the abstract layout; `apply` must accept
      the stored form (it dequantises).
    forward: optional adapter tree -> `Extras` (prompt, prefix, bottleneck adapters), run
      inside the jitted loss by `llm.train.trainable.model_forward`; such a run's decoder
      cannot be returned merged (`llm.checkpoint.load_model` refuses it by name).
    """

    component: str
    init: Callable[[PeftConfig, PyTree, PyTree, jax.Array], tuple[PyTree, PyTree]]
    axes: Callable[[PeftConfig, PyTree, PyTree], PyTree]
    apply: Adapter | None = None
    frozen: tuple[str, ...] = ()
    store: Callable[[PeftConfig, PyTree, PyTree], tuple[PyTree, PyTree]] | None = None
    forward: ForwardHook | None = None


METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method) -> None:
    """Makes `peft.method: name` build `method`'s component and `model_params` apply it."""
    if name in METHODS:
        raise ValueError(f"peft method {name!r} is already registered")
    if (method.apply is None) == (method.forward is None):
        raise ValueError(f"peft method {name!r} needs exactly one of apply and forward")
    method = dataclasses.replace(
        method, init=_on_transformer(name, method.init), axes=_on_transformer(name, method.axes)
    )
    if method.apply is not None:
        register_adapter(method.component, method.apply)
    else:
        if method.component in FORWARD or method.component in ADAPTERS:
            raise ValueError(f"adapter component {method.component!r} is already registered")
        FORWARD[method.component] = method.forward
    METHODS[name] = method


def _on_transformer(name: str, build: Callable) -> Callable:
    """`build` (a Method's init or axes), refusing a decoder without Transformer blocks: every
    method adapts a block's Linears, attention or sub-layer outputs, which the classical
    baselines (`model.arch`: ngram_mlp, rnn, lstm, gru) do not have."""

    def checked(cfg: PeftConfig, model: PyTree, axes: PyTree, *rest):
        if "blocks" not in model:
            raise ValueError(
                f"peft.method={name} adapts a Transformer's blocks; this decoder has none "
                f"(params {sorted(model)}): train a baseline model.arch whole (peft.method=none)"
            )
        return build(cfg, model, axes, *rest)

    return checked


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

register_method(
    "adalora",
    Method(
        component=adalora.NAME,
        init=adalora.init_adalora,
        axes=lambda cfg, model, axes: adalora.adalora_axes(find_targets(cfg, model, axes)),
        apply=adalora.apply_adalora,
        frozen=(SCALE_LEAF,),
    ),
)

register_method(
    "dora",
    Method(
        component=dora.NAME,
        init=dora.init_dora,
        axes=dora.dora_axes,
        apply=dora.apply_dora,
        frozen=(SCALE_LEAF,),
    ),
)

register_method(
    "ia3",
    Method(component=ia3.NAME, init=ia3.init_ia3, axes=ia3.ia3_axes, apply=ia3.apply_ia3),
)

register_method(
    "qlora",
    Method(
        component=qlora.NAME,
        init=init_lora,
        axes=lambda cfg, model, axes: lora_axes(find_targets(cfg, model, axes)),
        apply=qlora.apply_qlora,
        frozen=(SCALE_LEAF,),
        store=qlora.store,
    ),
)

register_method(
    "prompt",
    Method(prompt.NAME, prompt.init_prompt, prompt.prompt_axes, forward=prompt.prompt_extras),
)

register_method(
    "prefix",
    Method(prefix.NAME, prefix.init_prefix, prefix.prefix_axes, forward=prefix.prefix_extras),
)

register_method(
    "adapter",
    Method(
        adapters.NAME,
        adapters.init_adapters,
        adapters.adapter_axes,
        forward=adapters.adapter_extras,
    ),
)


def stored_decoder(cfg: PeftConfig, model: PyTree, axes: PyTree) -> tuple[PyTree, PyTree]:
    """(decoder, axes) as a run of `cfg.method` keeps them in its frozen tree (unchanged
    unless the method stores the base differently, as QLoRA quantises it)."""
    method = METHODS.get(cfg.method)
    if method is None or method.store is None:
        return model, axes
    return method.store(cfg, model, axes)


__all__ = [
    "ADAPTERS",
    "FORWARD",
    "METHODS",
    "NAME",
    "SCALE_LEAF",
    "Adapter",
    "ForwardHook",
    "Method",
    "adalora",
    "adapters",
    "apply_lora",
    "dora",
    "find_targets",
    "ia3",
    "init_lora",
    "lora",
    "lora_axes",
    "merge",
    "n_trainable",
    "prefix",
    "prompt",
    "qlora",
    "register_adapter",
    "register_method",
    "stored_decoder",
    "unmerge",
]

"""What a run trains: a `params` tree (differentiated, optimised) and a `frozen` tree (read).

    split = Trainable(freeze=("embed",)).split(model_params, model_axes)
    split.params   # {"model": {...everything but the embedding...}}
    split.frozen   # {"model": {"embed": ...}}
    model = model_params(split.params, split.frozen)   # the decoder's full tree again

Both trees are dicts of *components*. The decoder's params are the component `"model"`; a run
that fine-tunes part of it has `"model"` in both trees with disjoint leaves. Other components
sit beside it under their own names: a value or classification head, an adapter keyed like the
params it adapts, a reference policy or teacher (frozen), a pruning mask. The base tree keeps
its paths, so an adapter or mask names the leaves it applies to (STYLE.md, post-training).
`model_params` applies the adapter components it finds in either tree through a registry
keyed by component name (`llm.peft.ADAPTERS`; LoRA is llm/peft/lora.py), inside the jitted
loss, so no loss knows about adapters.

Methods that change the forward pass rather than the weights (prompt and prefix tuning,
bottleneck adapters: `llm.peft.FORWARD`) cannot be merged into a decoder tree. The hook
every loss runs the decoder through is therefore `model_forward(model_cfg, params, frozen,
inputs_BL, ...)`, not `forward(model_cfg, model_params(params, frozen), ...)`: it applies
both kinds, and its output covers the batch's real tokens only. A new loss (classification,
DPO, ...) that calls it trains every PEFT method without knowing any of them.

Why two trees and not a mask over one: only `params` goes through `jax.grad` and the
optimiser, so frozen leaves get no gradient buffer, no optimiser moments and no update at all
(not a zero update), and a frozen reference model costs its weights and nothing more. Every
leaf of both trees carries logical axes, so the one rules table shards them alike.

A preference or RL loss scores against a *reference policy* (`Trainable(reference=True)`,
set by `llm.train.build.run_trainable` for a loss with `Loss.reference`): the frozen
component "reference" holds a copy, made at step 0, of every trained component the decoder's
forward reads (the trained decoder leaves; a PEFT adapter's trained leaves), and
`reference_forward` runs the decoder with it in place of `params`. Under full fine-tuning
that is a second copy of the trained weights (unavoidable); under LoRA and the other
adapters it is a copy of the adapter at its initialisation, which leaves the base unchanged
(LoRA's B starts at zero), so the reference is the base with the adapter switched off at
the cost of the adapter's size, never a second base.

Two frozen components change what the forward computes without adding trained leaves: a
distillation teacher ("teacher", added by `llm.train.losses.distill.DistillLoss.components`,
read only by that loss) and quantization-aware training ("qat", `train.qat`): a leafless
`llm.compress.qat.QatSpec` whose static fields ride the tree's structure, applied by
`model_params` after the adapters, so every loss sees the decoder's weights on the grid
they will be served with while gradients reach the float weights (straight-through).

The default (`Trainable()`) is pretraining: every decoder param trainable, nothing frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax

from llm.compress import sparsity
from llm.compress.qat import COMPONENT as QAT
from llm.compress.qat import apply_qat, check_spec, qat_spec
from llm.model import ModelOutput, abstract_params, forward, logical_axes
from llm.model.extras import Extras, combine
from llm.peft import ADAPTERS, FORWARD, METHODS
from llm.train.warm_start import warm_start_config
from llm.typing import PyTree

MODEL = "model"  # the decoder's component in the params / frozen trees
REFERENCE = "reference"  # the frozen step-0 copy of the policy's trained components


@dataclasses.dataclass(frozen=True)
class Component:
    """An extra tree beside the decoder: built from a key (fresh) or given (loaded).

    build: key -> tree (traced under jit, so it is created directly in its shards); with
      `from_model`, (key, decoder tree) -> tree, for a component whose init reads the
      decoder's weights (DoRA's magnitudes start at the weights' column norms).
    axes: the tree's logical axes, a tree of `PartitionSpec`s of the same structure.
    trainable: into `params` (True) or `frozen` (False).
    freeze: regexes on the tree's own paths whose leaves go to `frozen` even when the
      component is trainable (a LoRA adapter's fixed scale beside its trained A and B), so
      the component sits in both trees with disjoint leaves, as the decoder can.
    """

    build: Callable[..., PyTree]
    axes: PyTree
    trainable: bool = True
    freeze: tuple[str, ...] = ()
    from_model: bool = False  # build also takes the decoder's (loaded or fresh) tree

    def is_frozen(self, path: str) -> bool:
        return not self.trainable or any(re.search(p, path) for p in self.freeze)


@dataclasses.dataclass(frozen=True)
class Split:
    """The two trees of a run and their logical axes (same structures)."""

    params: PyTree
    frozen: PyTree
    params_axes: PyTree
    frozen_axes: PyTree


def path_of(keys: tuple[Any, ...]) -> str:
    """The "blocks/attn/q/w" form of a pytree key path (the names `freeze` patterns match)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def _partition(tree: PyTree, keep: Callable[[str], bool], prefix: str = "") -> tuple[dict, dict]:
    """(leaves where keep(path), the others) of a nested dict, empty sub-dicts dropped."""
    yes, no = {}, {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            a, b = _partition(value, keep, path + "/")
            if a:
                yes[key] = a
            if b:
                no[key] = b
        elif keep(path):
            yes[key] = value
        else:
            no[key] = value
    return yes, no


def merge(a: PyTree, b: PyTree, where: str = "") -> dict:
    """The union of two nested dicts with disjoint leaves (inverse of the split)."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = merge(out[key], value, f"{where}{key}/")
        else:
            raise ValueError(f"{where}{key} is in both the trainable and the frozen tree")
    return out


def model_params(params: PyTree, frozen: PyTree) -> PyTree:
    """The decoder's full param tree: its trainable and frozen leaves merged back, then every
    registered adapter component found in either tree applied to it (sorted by name), then
    the run's quantization-aware training spec, when it has one (component "qat")."""
    model = merge(params.get(MODEL, {}), frozen.get(MODEL, {}))
    for name in sorted(set(params) | set(frozen)):
        apply = ADAPTERS.get(name) if name != MODEL else None
        if apply is not None:
            model = apply(model, merge(params.get(name, {}), frozen.get(name, {}), f"{name}/"))
    if QAT in frozen:
        model = apply_qat(model, frozen[QAT])
    return model


def forward_extras(params: PyTree, frozen: PyTree) -> Extras | None:
    """What the forward-pass components in either tree (`llm.peft.FORWARD`: prompt, prefix,
    bottleneck adapters) add to the decoder's forward; None when the run has none."""
    found = [
        FORWARD[name](merge(params.get(name, {}), frozen.get(name, {}), f"{name}/"))
        for name in sorted(set(params) | set(frozen))
        if name in FORWARD
    ]
    return combine(*found) if found else None


def model_forward(
    model_cfg: Any, params: PyTree, frozen: PyTree, inputs_BL: jax.Array, **kwargs: Any
) -> ModelOutput:
    """The decoder run for a loss: `llm.model.forward` of `model_params(params, frozen)` with
    the run's `forward_extras`; `kwargs` are forward's (positions_BL, segment_ids_BL,
    dropout_key, return_logits, ...). Every loss calls this, so every PEFT method, merged or
    not, reaches every loss; logits and hidden states cover the L real tokens only."""
    weights = model_params(params, frozen)
    extras = forward_extras(params, frozen)
    return forward(model_cfg, weights, inputs_BL, extras=extras, **kwargs)


def policy_components(tree: PyTree) -> dict:
    """The components of `tree` that the decoder's forward reads (decoder, adapters)."""
    return {k: v for k, v in tree.items() if k == MODEL or k in ADAPTERS or k in FORWARD}


def reference_forward(
    model_cfg: Any, params: PyTree, frozen: PyTree, inputs_BL: jax.Array, **kwargs: Any
) -> ModelOutput:
    """`model_forward` of the reference policy: the frozen "reference" copy in place of the
    trained components (see the module docstring), gradients stopped. `params` is unused
    but taken so that policy and reference calls read alike."""
    del params
    if REFERENCE not in frozen:
        raise ValueError(
            "this loss scores against a reference policy, but the run's frozen tree has no "
            f"{REFERENCE!r} component; build the run with Trainable(reference=True) "
            "(run_trainable does so for a loss with `reference = True`)"
        )
    ref = jax.lax.stop_gradient(frozen[REFERENCE])
    rest = {k: v for k, v in frozen.items() if k != REFERENCE}
    return model_forward(model_cfg, ref, rest, inputs_BL, **kwargs)


@dataclasses.dataclass(frozen=True)
class Trainable:
    """Which decoder params are frozen (regexes on their paths), plus extra components."""

    freeze: tuple[str, ...] = ()
    extra: Mapping[str, Component] = dataclasses.field(default_factory=dict)
    # how the frozen decoder is kept: (frozen decoder, its axes) -> (stored tree, its axes),
    # abstract or under jit (QLoRA quantises it, `llm.peft.Method.store`); None: as is
    store: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None
    reference: bool = False  # also keep a frozen step-0 copy of the policy ("reference")

    def __post_init__(self) -> None:
        for name in (MODEL, REFERENCE):
            if name in self.extra:
                raise ValueError(f"extra component name {name!r} is reserved")

    def is_frozen(self, path: str) -> bool:
        return any(re.search(p, path) for p in self.freeze)

    def check(self, model_tree: PyTree) -> None:
        """Every pattern must match some param, and something must stay trainable."""
        paths = [path_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(model_tree)[0]]
        for pattern in self.freeze:
            if not any(re.search(pattern, p) for p in paths):
                raise ValueError(
                    f"train.freeze: {pattern!r} matches no model param; params are named like "
                    f"{', '.join(paths[:4])}"
                )
        if all(self.is_frozen(p) for p in paths) and not any(
            c.trainable for c in self.extra.values()
        ):
            raise ValueError("train.freeze: every param is frozen; nothing would be trained")

    def split(self, model_tree: PyTree, model_axes: PyTree, key: jax.Array | None = None) -> Split:
        """(params, frozen) and their axes; `key` builds the extra components (under jit)."""
        frozen_m, train_m = _partition(model_tree, self.is_frozen)
        frozen_ax, train_ax = _partition(model_axes, self.is_frozen)
        if self.store is not None and frozen_m:
            frozen_m, frozen_ax = self.store(frozen_m, frozen_ax)
        params, frozen = _component(train_m), _component(frozen_m)
        params_axes, frozen_axes = _component(train_ax), _component(frozen_ax)
        keys = jax.random.split(key, max(len(self.extra), 1)) if key is not None else None
        for i, (name, comp) in enumerate(sorted(self.extra.items())):
            if keys is not None:
                tree = comp.build(keys[i], *((model_tree,) if comp.from_model else ()))
            else:
                args = (model_tree,) if comp.from_model else ()
                tree = jax.eval_shape(comp.build, jax.random.key(0), *args)
            _place(name, comp, tree, params, frozen)
            _place(name, comp, comp.axes, params_axes, frozen_axes)
        if self.reference:
            # a copy (not an alias: the train step donates and updates `params`)
            frozen[REFERENCE] = jax.tree.map(_copy, policy_components(params))
            frozen_axes[REFERENCE] = policy_components(params_axes)
        return Split(params, frozen, params_axes, frozen_axes)


def _copy(x: Any) -> Any:
    return x if isinstance(x, jax.ShapeDtypeStruct) else jax.numpy.array(x, copy=True)


def _place(name: str, comp: Component, tree: PyTree, params: dict, frozen: dict) -> None:
    """Puts a component's tree (or its axes) into params / frozen, split by `comp.freeze`."""
    if not comp.freeze or not isinstance(tree, Mapping):
        (params if comp.trainable else frozen)[name] = tree
        return
    fixed, trained = _partition(tree, comp.is_frozen)
    if trained:
        params[name] = trained
    if fixed:
        frozen[name] = fixed


def _component(tree: dict) -> dict:
    return {MODEL: tree} if tree else {}


FREEZE_ALL = (".",)  # a train.freeze pattern matching every decoder param


def trainable_from_config(cfg: Any) -> Trainable:
    """What `cfg` trains: the decoder less `train.freeze` (peft.method none), or the adapter
    of `peft.method` (`llm.peft.METHODS`) on the whole frozen decoder. With `train.init_from`
    the adapter is shaped for the source's architecture, as the run will be. Bad targets
    raise here, before any compile."""
    peft = cfg.peft
    if peft.method == "none":
        extra = {**sparsity_components(cfg), **qat_components(cfg)}
        return Trainable(freeze=tuple(cfg.train.freeze), extra=extra)
    qat_components(cfg)  # refuses train.qat beside an adapter
    sparsity_components(cfg)  # refuses train.keep_sparsity beside an adapter
    if cfg.train.freeze:
        raise ValueError(
            f"train.freeze: {list(cfg.train.freeze)} with peft.method={peft.method}, which "
            "already freezes the whole decoder; leave train.freeze empty"
        )
    if peft.method not in METHODS:
        raise ValueError(f"peft.method: {peft.method!r} is not registered ({sorted(METHODS)})")
    method = METHODS[peft.method]
    model_cfg = warm_start_config(cfg).model  # train.init_from: the source's architecture
    model, axes = abstract_params(model_cfg), logical_axes(model_cfg)
    adapter = Component(
        build=lambda key, tree: method.init(peft, tree, axes, key)[0],
        axes=method.axes(peft, model, axes),
        trainable=True,
        freeze=method.frozen,
        from_model=True,  # init sees the run's decoder (DoRA reads its weights' norms)
    )
    store = None if method.store is None else functools.partial(method.store, peft)
    if store is not None:
        store(model, axes)  # abstract: a matrix the storage cannot take raises here
    return Trainable(freeze=FREEZE_ALL, extra={method.component: adapter}, store=store)


# --- pruning: train.keep_sparsity (llm/compress/sparsity.py) ---------------------------------


def sparsity_components(cfg: Any) -> dict[str, Component]:
    """{"mask": a frozen component} under `train.keep_sparsity`, else {}. The masks are the
    nonzeros of the decoder the run starts from (init_from's pruned weights, read inside the
    split), applied in `model_params`, so pruned weights get exactly zero gradients and
    updates (see llm/compress/sparsity.py for which optimisers that holds for)."""
    if not cfg.train.keep_sparsity:
        return {}
    if cfg.peft.method != "none":
        raise ValueError(
            f"train.keep_sparsity with peft.method={cfg.peft.method}: the adapter's merged "
            "update would fill the frozen base's zeros; keep_sparsity is for full fine-tuning"
        )
    if cfg.optim.name == "muon":
        raise ValueError(
            "train.keep_sparsity with optim.name=muon: Muon orthogonalises whole gradient "
            "matrices, so pruned weights would be updated; use adamw, adafactor, lion or sgd"
        )
    model_cfg = warm_start_config(cfg).model
    mask = Component(
        build=lambda key, tree: sparsity.masks_from_zeros(tree),
        axes=sparsity.mask_axes(logical_axes(model_cfg)),
        trainable=False,
        from_model=True,
    )
    return {sparsity.NAME: mask}


# --- quantization-aware training: train.qat (llm/compress/qat.py) ----------------------------


def qat_components(cfg: Any) -> dict[str, Component]:
    """{"qat": the run's QatSpec as a frozen, leafless component} under `train.qat`, else {}.
    `model_params` fake-quantizes the targets with it in every forward (straight-through
    gradients to the float weights); a target the grid cannot take raises here."""
    qat = cfg.train.qat
    if qat.fmt == "none":
        return {}
    if cfg.peft.method != "none":
        raise ValueError(
            f"train.qat with peft.method={cfg.peft.method}: QAT trains the decoder's own "
            "weights toward the grid; use it with full fine-tuning or pretraining"
        )
    model_cfg = warm_start_config(cfg).model
    spec = qat_spec(model_cfg, fmt=qat.fmt, bits=qat.bits, group=qat.group, targets=qat.targets)
    check_spec(spec, abstract_params(model_cfg))
    return {QAT: Component(build=lambda key: spec, axes=spec, trainable=False)}

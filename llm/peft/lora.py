"""LoRA (Hu et al. 2021, arXiv:2106.09685): a low-rank update W + scale * A @ B.

    tree, axes = init_lora(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    model = apply_lora(base, tree)      # what the loss runs: W + scale * A @ B per target
    base_again = unmerge(model, tree)   # W within float rounding

The adapter is a separate tree keyed like the decoder params it adapts (STYLE.md,
post-training): for the target "blocks/attn/q/w" it holds blocks/attn/q/w/{a, b, scale}. The
base tree is never renamed or copied into a new layout, so a checkpoint of the base, the
sharding rules and the Hugging Face names all keep working.

Shapes and axes come from the base weight. A weight's logical axes are a leading "layers"
(the stacked blocks), then its input axes, then its output axes; the model dimension "embed"
is on one side: q/k/v/up/gate are [layers, embed | heads, head_dim] or [layers, embed | mlp],
o/down are [layers, heads, head_dim | embed] or [layers, mlp | embed]. So

    A: [layers, *in, r]   axes ("layers", *in_axes, None)   normal, std 1/sqrt(fan_in)
    B: [layers, r, *out]  axes ("layers", None, *out_axes)  zeros, so step 0 is the base model

and A @ B (one batched matmul over the flattened in/out dims) reshapes to W's shape. The
rank axis is unsharded; the others shard exactly like the base weight's.

scale is alpha / r (Hu et al.), or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023,
arXiv:2312.03732), which keeps the update's size stable as r grows. It is stored in the
adapter as a frozen scalar leaf, so a saved run describes itself and `model_params` needs no
config to apply it.

The update is merged into W inside the jitted loss rather than run as x @ A @ B beside x @ W:
the model's layers stay untouched. The cost is that backpropagation forms the gradient of
the merged W (one weight-shaped matmul per targeted matrix; untargeted frozen matrices get
none), while the optimiser still holds state for A and B only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.typing import PyTree

NAME = "lora"  # the adapter's component name in the params / frozen trees
SCALE_LEAF = r"/scale$"  # the frozen part of each adapted target
LAYERS, EMBED = "layers", "embed"
# (weight path, adapter entry, weight shape) -> the float32 update added to the weight
Update = Callable[[str, dict, tuple[int, ...]], jax.Array]


def path_of(keys: tuple[Any, ...]) -> str:
    """The "blocks/attn/q/w" form of a pytree key path (the names `peft.target` matches)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted weight: its path, and its shape / axes split into layers | in | out."""

    path: str
    n_in: int  # how many axes after "layers" are input axes (the rest are output axes)
    shape: tuple[int, ...]
    axes: tuple[Any, ...]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shape[1 : 1 + self.n_in]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape[1 + self.n_in :]


def _target(path: str, shape: tuple[int, ...], axes: tuple[Any, ...]) -> Target:
    """A Target for a matched param, or a ValueError saying why it cannot be adapted."""
    if len(axes) < 3 or axes[0] != LAYERS:
        raise ValueError(
            f"peft.target: {path} has axes {axes}; LoRA adapts the blocks' weight matrices "
            "(a leading 'layers' axis, then input and output axes)"
        )
    if "expert" in axes:  # one low-rank update over all experts' flattened rows: not LoRA
        raise ValueError(
            f"peft.target: {path} holds the stacked weights of a mixture-of-experts MLP "
            f"(axes {axes}); adapters per expert (LoRA, DoRA, IA3) are not supported: target "
            "attention or the router"
        )
    if axes[1] == EMBED:
        n_in = 1
    elif axes[-1] == EMBED:
        n_in = len(axes) - 2
    else:
        raise ValueError(f"peft.target: {path} has axes {axes}, none of its sides is 'embed'")
    return Target(path, n_in, tuple(shape), tuple(axes))


def find_targets(cfg: PeftConfig, model: PyTree, axes: PyTree) -> list[Target]:
    """The params whose whole path matches one of `cfg.target` (as HF PEFT's string form)."""
    leaves = jax.tree_util.tree_flatten_with_path(model)[0]
    specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    paths = [path_of(p) for p, _ in leaves]
    for pattern in cfg.target:
        if not any(re.fullmatch(pattern, p) for p in paths):
            raise ValueError(
                f"peft.target: {pattern!r} matches no model param (whole path); params are "
                f"named like {', '.join(p for p in paths if p.startswith('blocks/'))}"
            )
    return [
        _target(path, leaf.shape, tuple(spec))
        for path, (_, leaf), spec in zip(paths, leaves, specs, strict=True)
        if any(re.fullmatch(p, path) for p in cfg.target)
    ]


def _nest(entries: dict[str, Any]) -> dict:
    """{"blocks/attn/q/w": x} -> {"blocks": {"attn": {"q": {"w": x}}}}."""
    out: dict = {}
    for path, value in entries.items():
        *parents, last = path.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def lora_axes(targets: list[Target]) -> PyTree:
    """Logical axes of the adapter: the base weight's, with an unsharded rank axis."""
    return _nest({
        t.path: {
            "a": PartitionSpec(LAYERS, *t.axes[1 : 1 + t.n_in], None),
            "b": PartitionSpec(LAYERS, None, *t.axes[1 + t.n_in :]),
            "scale": PartitionSpec(),
        }
        for t in targets
    })  # fmt: skip


def init_lora(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(adapter tree, its logical axes) for the abstract (or concrete) decoder `model`."""
    targets = find_targets(cfg, model, axes)
    dtypes = {path_of(p): x.dtype for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
    keys = jax.random.split(key, len(targets))
    entries = {}
    for k, t in zip(keys, targets, strict=True):
        dtype, fan_in = dtypes[t.path], math.prod(t.in_shape)
        a = jax.random.normal(k, (t.shape[0], *t.in_shape, cfg.rank), dtype) / math.sqrt(fan_in)
        entries[t.path] = {
            "a": a.astype(dtype),
            "b": jnp.zeros((t.shape[0], cfg.rank, *t.out_shape), dtype),
            "scale": jnp.asarray(cfg.scale, jnp.float32),
        }
    return _nest(entries), lora_axes(targets)


def delta(entry: dict[str, jax.Array], shape: tuple[int, ...]) -> jax.Array:
    """scale * A @ B in float32, reshaped to the base weight's `shape` [layers, *in, *out]."""
    a, b = entry["a"], entry["b"]
    rank = a.shape[-1]
    a2 = a.reshape(a.shape[0], -1, rank)
    b2 = b.reshape(b.shape[0], rank, -1)
    ab = jnp.matmul(a2, b2, preferred_element_type=jnp.float32)
    return (entry["scale"] * ab).reshape(shape)


def entries(lora: PyTree, prefix: str = "") -> dict[str, dict]:
    """{"blocks/attn/q/w": {"a", "b", "scale"}} from the nested adapter tree."""
    if "a" in lora and "b" in lora:
        return {prefix.rstrip("/"): lora}
    out = {}
    for key, value in lora.items():
        out.update(entries(value, f"{prefix}{key}/"))
    return out


def _check_fits(path: str, entry: dict[str, jax.Array], shape: tuple[int, ...]) -> None:
    """A [layers, *in, r] @ B [layers, r, *out] must tile the weight [layers, *in, *out]."""
    a, b = entry["a"].shape, entry["b"].shape
    if a[0] != shape[0] or b[0] != shape[0] or (*a[1:-1], *b[2:]) != tuple(shape[1:]):
        raise ValueError(
            f"LoRA adapter for {path} has A {a} and B {b}, which do not fit the weight {shape} "
            "(an adapter built for another model config?)"
        )


def add_updates(
    model: PyTree, adapter: PyTree, update: Update, is_entry: Callable[[dict], bool], where=""
) -> PyTree:
    """The decoder tree with `update(path, entry, weight shape)` (a float32 delta) added to
    each weight the adapter has an entry for (a new tree; untouched leaves are the same
    arrays). Shared by the additive methods: LoRA, QLoRA, AdaLoRA."""
    missing = sorted(set(adapter) - set(model))
    if missing:
        raise ValueError(f"the adapter names {where}{missing[0]}, which the model lacks")
    out = dict(model)
    for key, entry in adapter.items():
        w = model[key]
        if is_entry(entry):
            step = update(f"{where}{key}", entry, w.shape)
            out[key] = (w.astype(jnp.float32) + step).astype(w.dtype)
        else:
            out[key] = add_updates(w, entry, update, is_entry, f"{where}{key}/")
    return out


def _add(model: PyTree, lora: PyTree, sign: float) -> PyTree:
    """The decoder tree with sign * scale * A @ B added to each adapted weight."""

    def update(path: str, entry: dict, shape: tuple[int, ...]) -> jax.Array:
        _check_fits(path, entry, shape)
        return sign * delta(entry, shape)

    return add_updates(model, lora, update, lambda e: "a" in e and "b" in e)


def apply_lora(model: PyTree, lora: PyTree) -> PyTree:
    """W + scale * A @ B for every target; what `model_params` runs inside the loss."""
    return _add(model, lora, 1.0)


merge = apply_lora  # the same sum, run once outside the loss (export, serving)


def unmerge(merged: PyTree, lora: PyTree) -> PyTree:
    """The base weights back from merged ones (exact up to float rounding)."""
    return _add(merged, lora, -1.0)


def n_trainable(lora: PyTree) -> int:
    """Trained adapter parameters: the sizes of every A and B (the scale is frozen)."""
    return sum(e["a"].size + e["b"].size for e in entries(lora).values())

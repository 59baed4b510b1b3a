"""Sparsity kept through fine-tuning: the frozen "mask" component of a run.

    masks = masks_from_zeros(params)          # bool, keyed like the block Linears it covers
    params = apply_masks(params, masks)       # where(mask, w, 0): run inside the loss

`train.keep_sparsity: true` (with `train.init_from` a pruned model, `llm prune`) adds this
component to the run's frozen tree (llm/train/trainable.py): `model_params` applies it to the
decoder through the adapter registry (`llm.peft.register_adapter`), inside the jitted loss, so
every loss trains a masked model without knowing about masks. The gradient of where(mask, w, 0)
is exactly zero at pruned positions, so an optimiser whose update of a weight is a function of
that weight's own gradient history (AdamW, Adafactor, Lion, SGD; decoupled weight decay
multiplies w = 0) never moves them: the stored weights stay exact zeros, and the saved run
loads (`load_model`) with its zeros whether or not the loader applies the mask. Muon
orthogonalises whole gradient matrices and would move them, so it is refused with
keep_sparsity.

Design choice: masks are derived from the exact zeros of the loaded weights, not stored in the
model directory. A pruned model directory is then an ordinary float model that every tool
reads (eval, generate, serve, convert), and nothing can disagree with the weights. The cost is
that a weight trained to exactly 0.0 elsewhere would be taken as pruned; in float32 that has
probability ~0, and the effect (it stays zero) is benign. The run's checkpoints store the
mask (it is a frozen component), so a resumed run keeps it even if weights changed.

Masks cover every weight the pattern names (default: all block Linears), whatever their
sparsity, so the component's shape is known from the config before any weight is read; a
bool mask costs a quarter of a float32 weight.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from llm.model.quantized import BLOCK_LINEARS
from llm.peft import register_adapter
from llm.typing import PyTree

NAME = "mask"  # the component's name in a run's frozen tree


def _select(tree: PyTree, pattern: str, fn, prefix: str = "") -> dict:
    """{key: fn(leaf)} nested like `tree`, for the leaves whose path matches `pattern`."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            sub = _select(value, pattern, fn, path + "/")
            if sub:
                out[key] = sub
        elif re.search(pattern, path):
            out[key] = fn(value)
    return out


def masks_from_zeros(model: PyTree, pattern: str = BLOCK_LINEARS) -> PyTree:
    """Keep masks (w != 0) of the weights whose path matches `pattern`; abstract in,
    abstract out (bool `ShapeDtypeStruct`s)."""

    def mask(w):
        if isinstance(w, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(w.shape, jnp.bool_, sharding=w.sharding)
        return w != 0

    masks = _select(model, pattern, mask)
    if not masks:
        raise ValueError(f"keep_sparsity: mask pattern {pattern!r} matches no model param")
    return masks


def mask_axes(model_axes: PyTree, pattern: str = BLOCK_LINEARS) -> PyTree:
    """Logical axes of the masks: those of the weights they cover."""
    return _select(model_axes, pattern, lambda a: a)  # PartitionSpecs are leaves here


def apply_masks(model: PyTree, masks: PyTree, where: str = "") -> PyTree:
    """The decoder tree with each masked weight's pruned positions set to exactly zero."""
    out = dict(model)
    for key, mask in masks.items():
        if key not in model:
            raise ValueError(f"the sparsity mask names {where}{key}, which the model lacks")
        if isinstance(mask, dict):
            out[key] = apply_masks(model[key], mask, f"{where}{key}/")
        elif mask.shape != model[key].shape:
            raise ValueError(f"sparsity mask {where}{key} has shape {mask.shape}, the weight "
                             f"{model[key].shape} (a mask from another model?)")  # fmt: skip
        else:
            out[key] = jnp.where(mask, model[key], jnp.zeros((), model[key].dtype))
    return out


register_adapter(NAME, apply_masks)

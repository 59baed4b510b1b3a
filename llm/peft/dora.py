"""DoRA (Liu et al. 2024, arXiv:2402.09353): a LoRA update split into magnitude and direction.

    tree, axes = init_dora(cfg.peft, base, logical_axes(cfg.model), key)   # base: real weights
    model = apply_dora(base, tree)          # W' = m * V / ||V||_c,  V = W + scale * A @ B
    norms = column_norms(base, tree)        # ||V||_c: keep these to unmerge later
    base_again = unmerge(model, tree, norms)

Each target holds LoRA's A, B and scale (llm/peft/lora.py builds them: same targets, init,
axes and scale) plus a magnitude vector m. A weight is [layers, *in, *out]; its "columns"
are its output features, so ||V||_c is the L2 norm over the input axes, one per output
feature, shape [layers, *out], and m has that shape and the base weight's output axes
("layers", *out_axes), so it shards like the weight's output side.

m starts at ||W||_c and B at zero, so at step 0 V = W and m / ||V||_c is 1.0: the decoder is
the base (tests/peft/test_dora.py checks it bit for bit). m is stored in float32 whatever the
weight dtype: a bfloat16 m would round ||W||_c and step 0 would not be the base.

The norm is detached from the gradient (stop_gradient), as the paper's sec. 4.3 suggests and
Hugging Face PEFT does (`weight_norm.detach()`): its value follows A and B, but gradients
reach A and B only through V in the numerator, which saves the norm's backward pass and
gives PEFT's training dynamics.

Unmerging needs ||V||_c, which the merged weight no longer shows (W' only keeps V's
direction): `column_norms(base, tree)` returns them ([layers, *out] per target, the size of
m), and `unmerge(merged, tree, norms)` gives W = ||V||_c / m * W' - scale * A @ B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.peft.lora import LAYERS, _check_fits, delta, entries, find_targets, init_lora, lora_axes
from llm.typing import PyTree

NAME = "dora"  # the adapter's component name in the params / frozen trees
MAGNITUDE = "m"


def _n_in(entry: dict[str, jax.Array]) -> int:
    """How many input axes the adapted weight has: A is [layers, *in, r]."""
    return entry["a"].ndim - 2


def _column_norm(v: jax.Array, n_in: int) -> jax.Array:
    """||v||_c: the L2 norm over the input axes 1..n_in of [layers, *in, *out], in float32."""
    v = v.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, 1 + n_in))))


def _at(tree: PyTree, path: str) -> PyTree:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def dora_axes(cfg: PeftConfig, model: PyTree, axes: PyTree) -> PyTree:
    """LoRA's axes plus m: the base weight's output axes after "layers"."""
    targets = find_targets(cfg, model, axes)
    tree = lora_axes(targets)
    for t in targets:
        _at(tree, t.path)[MAGNITUDE] = PartitionSpec(LAYERS, *t.axes[1 + t.n_in :])
    return tree


def init_dora(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(adapter tree, its axes): LoRA's A, B, scale and m = ||W||_c read from `model`, whose
    targeted weights must be real (or traced) arrays, not ShapeDtypeStructs."""
    tree, _ = init_lora(cfg, model, axes, key)
    for path, entry in entries(tree).items():
        w = _at(model, path)
        if isinstance(w, jax.ShapeDtypeStruct):
            raise ValueError(
                f"DoRA init: {path} is abstract; m starts at the weight's column norms, so "
                "init needs the decoder's real weights (jax.eval_shape it for shapes)"
            )
        entry[MAGNITUDE] = _column_norm(w, _n_in(entry))
    return tree, dora_axes(cfg, model, axes)


def _check_magnitude(path: str, entry: dict[str, jax.Array], shape: tuple[int, ...]) -> None:
    _check_fits(path, entry, shape)
    want = (shape[0], *shape[1 + _n_in(entry) :])
    if MAGNITUDE not in entry or entry[MAGNITUDE].shape != want:
        got = entry[MAGNITUDE].shape if MAGNITUDE in entry else "no m"
        raise ValueError(f"DoRA adapter for {path} has m {got}; the weight {shape} needs {want}")


def _expand(x: jax.Array, n_in: int) -> jax.Array:
    """[layers, *out] -> [layers, 1 * n_in, *out], broadcastable against the weight."""
    return jnp.expand_dims(x, tuple(range(1, 1 + n_in)))


def _direction(w: jax.Array, entry: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(V, ||V||_c) in float32, the norm detached from the gradient (paper sec. 4.3)."""
    v = w.astype(jnp.float32) + delta(entry, w.shape)
    return v, jax.lax.stop_gradient(_column_norm(v, _n_in(entry)))


def _map_targets(model: PyTree, dora: PyTree, fn, where: str = "") -> PyTree:
    """The decoder tree with fn(path, w, entry) in place of each adapted weight."""
    missing = sorted(set(dora) - set(model))
    if missing:
        raise ValueError(f"the DoRA adapter names {where}{missing[0]}, which the model lacks")
    out = dict(model)
    for key, entry in dora.items():
        path = f"{where}{key}"
        if "a" in entry and "b" in entry:
            _check_magnitude(path, entry, model[key].shape)
            out[key] = fn(path, model[key], entry)
        else:
            out[key] = _map_targets(model[key], entry, fn, path + "/")
    return out


def apply_dora(model: PyTree, dora: PyTree) -> PyTree:
    """m * V / ||V||_c for every target; what `model_params` runs inside the loss."""

    def one(path: str, w: jax.Array, entry: dict) -> jax.Array:
        v, norm = _direction(w, entry)
        ratio = entry[MAGNITUDE].astype(jnp.float32) / norm
        return (_expand(ratio, _n_in(entry)) * v).astype(w.dtype)

    return _map_targets(model, dora, one)


merge = apply_dora  # the same weights, computed once outside the loss (export, serving)


def column_norms(model: PyTree, dora: PyTree) -> dict[str, jax.Array]:
    """{target path: ||W + scale * A @ B||_c} for the base `model`: what `unmerge` needs."""
    out = {}

    def keep(path: str, w: jax.Array, entry: dict) -> jax.Array:
        out[path] = _direction(w, entry)[1]
        return w

    _map_targets(model, dora, keep)
    return out


def unmerge(merged: PyTree, dora: PyTree, norms: dict[str, jax.Array]) -> PyTree:
    """The base weights from merged ones: ||V||_c / m * W' - scale * A @ B (float rounding)."""

    def one(path: str, w: jax.Array, entry: dict) -> jax.Array:
        if path not in norms:
            raise ValueError(f"DoRA unmerge: no column norms for {path} (see column_norms)")
        ratio = norms[path] / entry[MAGNITUDE].astype(jnp.float32)
        v = _expand(ratio, _n_in(entry)) * w.astype(jnp.float32)
        return (v - delta(entry, w.shape)).astype(w.dtype)

    return _map_targets(merged, dora, one)


def n_trainable(dora: PyTree) -> int:
    """Trained parameters: every A, B and m (the scale is frozen)."""
    return sum(e["a"].size + e["b"].size + e[MAGNITUDE].size for e in entries(dora).values())

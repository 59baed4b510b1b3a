"""(IA)^3 (Liu et al. 2022, arXiv:2205.05638): learned vectors that rescale activations.

    tree, axes = init_ia3(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    model = apply_ia3(base, tree)     # W * l per target: exactly the rescaled activations
    base_again = unmerge(model, tree)

The paper rescales the keys, the values and the FFN's intermediate activation elementwise by
vectors l_k, l_v, l_ff, initialised to ones (so step 0 is the base model, bit for bit: W * 1.0
is W). A rescaled activation is a rescaled weight: (x @ W) * l = x @ (W * l) with l on W's
output axes, and (h * l) @ W = h @ (W * l) with l on W's input axes. So the update merges
exactly, and is applied inside the loss like LoRA's, leaving the model code untouched.

Which side a target scales follows from where "embed" is (llm/peft/lora.py's `Target`): a
weight reading the model dimension (q, k, v, up, gate: [layers, embed | *out]) has its output
scaled (keys, values), a weight writing it (o, down: [layers, *in | embed]) has its input
scaled (the FFN intermediate; for o, the attention heads' output). The default target
(`peft.target: null`) is the paper's k, v and down. A scaled output includes its bias, as
(x @ W + b) * l: for k and v with biases the bias is rescaled too (Hugging Face PEFT does the
same); an input-side vector leaves the bias alone.

Per target the adapter holds l shaped to broadcast against the weight: [layers, 1, *out]
with axes ("layers", None, *out_axes) on the output side, [layers, *in, 1] with
("layers", *in_axes, None) on the input side; so applying it is W * l, and its side is read
from its shape (the collapsed input axis) even when d_ff equals d_model. l is float32 whatever
the weight dtype, so that small updates of a value near 1 are not rounded away in bfloat16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.peft.lora import LAYERS, Target, find_targets, path_of
from llm.typing import PyTree

NAME = "ia3"  # the adapter's component name in the params / frozen trees
VECTOR = "l"
BIAS = "b"  # the bias beside a weight "w" (model.qkv_bias, mlp_bias, out_bias)


def scales_output(t: Target) -> bool:
    """True for weights reading "embed" (q/k/v/up/gate): their outputs are rescaled."""
    return t.n_in == 1 and t.axes[1] == "embed"


def _side(t: Target) -> tuple[tuple[int, ...], tuple]:
    """(shape, axes) of l for one target: the weight's with its unscaled side collapsed."""
    if scales_output(t):
        return (t.shape[0], 1, *t.out_shape), (LAYERS, None, *t.axes[2:])
    return (*t.shape[: 1 + t.n_in], 1), (*t.axes[: 1 + t.n_in], None)


def is_output_side(l_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> bool:
    """An output-side l collapses the weight's (one, "embed") input axis."""
    return l_shape[1] == 1 < w_shape[1]


def _nested(pairs: dict[str, object]) -> dict:
    out: dict = {}
    for path, value in pairs.items():
        *parents, last = path.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def ia3_axes(cfg: PeftConfig, model: PyTree, axes: PyTree) -> PyTree:
    """Logical axes of the adapter: the scaled side's axes of each target weight."""
    targets = find_targets(cfg, model, axes)
    return _nested({t.path: {VECTOR: PartitionSpec(*_side(t)[1])} for t in targets})


def init_ia3(cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
    """(adapter tree of ones, its axes); `key` is unused: the paper initialises to ones."""
    del key
    targets = find_targets(cfg, model, axes)
    tree = {t.path: {VECTOR: jnp.ones(_side(t)[0], jnp.float32)} for t in targets}
    return _nested(tree), ia3_axes(cfg, model, axes)


def _rescale(model: PyTree, ia3: PyTree, inverse: bool, where: str = "") -> PyTree:
    """The decoder tree with each target weight (and an output-side bias) times l or / l."""
    missing = sorted(set(ia3) - set(model))
    if missing:
        raise ValueError(f"the IA3 adapter names {where}{missing[0]}, which the model lacks")
    out = dict(model)
    for key, entry in ia3.items():
        if VECTOR not in entry:
            out[key] = _rescale(model[key], entry, inverse, f"{where}{key}/")
            continue
        w, l = model[key], entry[VECTOR].astype(jnp.float32)
        if l.shape not in ((w.shape[0], 1, *w.shape[2:]), (*w.shape[:-1], 1)):
            raise ValueError(
                f"IA3 adapter for {where}{key} has l {l.shape}, which does not fit the weight "
                f"{w.shape} on either side (an adapter built for another model config?)"
            )
        out[key] = _scale(w, l, inverse)
        bias = model.get(BIAS) if key == "w" else None
        if bias is not None and is_output_side(l.shape, w.shape):  # (x @ W + b) * l
            out[BIAS] = _scale(bias, l.reshape(bias.shape), inverse)
    return out


def _scale(x: jax.Array, l: jax.Array, inverse: bool) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (x32 / l if inverse else x32 * l).astype(x.dtype)


def apply_ia3(model: PyTree, ia3: PyTree) -> PyTree:
    """W * l (and b * l on the output side) for every target; run inside the loss."""
    return _rescale(model, ia3, inverse=False)


merge = apply_ia3  # the same product, computed once outside the loss (export, serving)


def unmerge(merged: PyTree, ia3: PyTree) -> PyTree:
    """The base weights back, W' / l (float rounding); host-side, since a zero in some l
    (which erases what it scales, so nothing can recover it) is refused with its path."""
    for path, l in vectors(ia3).items():
        if np.any(np.asarray(l) == 0):
            raise ValueError(f"IA3 unmerge: {path} has a zero scale; the base is lost there")
    return _rescale(merged, ia3, inverse=True)


def vectors(ia3: PyTree) -> dict[str, jax.Array]:
    """{"blocks/attn/k/w": l} from the nested adapter tree."""
    flat = jax.tree_util.tree_flatten_with_path(ia3)[0]
    return {path_of(p[:-1]): x for p, x in flat if path_of(p[-1:]) == VECTOR}


def n_trainable(ia3: PyTree) -> int:
    """Trained parameters: the sizes of every l."""
    return sum(x.size for x in vectors(ia3).values())

"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA on a base stored in 4 or 8 bits.

    peft: {method: qlora, quant: nf4, quant_block: 64, rank: 8, target: [...]}

    stored, axes = store(cfg.peft, decoder, decoder_axes)   # what the run's frozen "model" holds
    model = apply_qlora(stored, adapter)                    # in the loss: dequantise, then LoRA

The adapter is LoRA's (llm/peft/lora.py: same targets, init, axes and merge) under its own
component name, "qlora", so `model_params` dequantises before adding A @ B. The difference is
the frozen decoder: each weight matrix is stored block-quantised (llm/peft/quant.py) and is
dequantised inside the jitted loss; float copies of the weights exist only transiently, in
the step, as LoRA's merged weights do.

What is quantised: every *matrix* of the decoder, a leaf with "embed" among its axes and at
least two axes besides a leading "layers": the blocks' q/k/v/o and MLP weights and the
embedding tables (token, position, an untied head). The embedding table is a fifth of
SmolLM2-135M, so storing it in float would miss the 0.3x memory target (docs/peft.md). Norms
and biases stay float: they are small and their precision matters more per parameter.

A quantised leaf is {"nf4" | "int8": codes, "scales": absmax per block} in place of the
weight. Its logical axes are the weight's: the codes keep all of them (packing halves the
last axis for NF4, which stays divisible by any mesh split of an even size), the scales keep
all but the last, whose length is n / quant_block and is left unsharded (it need not divide
the mesh; the scales are 1/16 of the NF4 codes' bytes at block 64).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.peft import quant
from llm.peft.lora import EMBED, LAYERS, apply_lora, path_of
from llm.typing import PyTree

NAME = "qlora"  # the adapter's component name in the params / frozen trees
CODE_DTYPES = {"nf4": "uint8", "int8": "int8"}


def is_matrix(axes: tuple[Any, ...]) -> bool:
    """A weight matrix (stored quantised): "embed" and another axis, besides a leading layers."""
    own = axes[1:] if axes and axes[0] == LAYERS else axes
    return len(own) >= 2 and EMBED in own


def _stored_leaf(cfg: PeftConfig, path: str, leaf: Any) -> dict[str, Any]:
    """One weight quantised: arrays under jit, `ShapeDtypeStruct`s for an abstract tree."""
    try:
        shapes = quant.stored_shapes(tuple(leaf.shape), cfg.quant, cfg.quant_block)
    except ValueError as err:
        raise ValueError(f"peft.quant_block: cannot quantise {path}: {err}") from None
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return {
            cfg.quant: jax.ShapeDtypeStruct(shapes[cfg.quant], CODE_DTYPES[cfg.quant]),
            quant.SCALES: jax.ShapeDtypeStruct(shapes[quant.SCALES], leaf.dtype),
        }
    return quant.quantize(leaf, cfg.quant, cfg.quant_block)


def _stored_axes(cfg: PeftConfig, spec: PartitionSpec) -> dict[str, PartitionSpec]:
    """The codes shard like the weight; the scales' short blocks axis is unsharded."""
    return {cfg.quant: spec, quant.SCALES: PartitionSpec(*tuple(spec)[:-1], None)}


def store(cfg: PeftConfig, model: PyTree, axes: PyTree) -> tuple[PyTree, PyTree]:
    """(the decoder as the frozen tree stores it, its logical axes): every matrix quantised.

    `model` may be abstract (`ShapeDtypeStruct`s: the run's layout) or concrete (traced under
    jit: a fresh or warm-started run's state, created in its shards). A matrix whose last
    axis is not a multiple of `quant_block` is a ValueError naming it."""
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    specs = jax.tree.leaves(axes, is_leaf=is_spec)
    leaves, leaf_axes = [], []
    for (path, leaf), spec in zip(flat, specs, strict=True):
        if is_matrix(tuple(spec)):
            leaves.append(_stored_leaf(cfg, path_of(path), leaf))
            leaf_axes.append(_stored_axes(cfg, spec))
        else:
            leaves.append(leaf)
            leaf_axes.append(spec)
    return treedef.unflatten(leaves), treedef.unflatten(leaf_axes)


def dequantize_tree(model: PyTree) -> PyTree:
    """The decoder with every quantised leaf dequantised (others untouched)."""
    return jax.tree.map(
        lambda x: quant.dequantize(x) if quant.is_quantized(x) else x,
        model,
        is_leaf=quant.is_quantized,
    )


def apply_qlora(model: PyTree, adapter: PyTree) -> PyTree:
    """What `model_params` runs inside the loss: dequantise the base, then W + scale * A @ B."""
    return apply_lora(dequantize_tree(model), adapter)


def stored_bytes(tree: PyTree) -> int:
    """Bytes of a (possibly abstract) tree's leaves: what the frozen base costs in memory."""
    return sum(x.size * jax.numpy.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

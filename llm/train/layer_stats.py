"""Per-layer statistics of a run: the gradient norm and the activation RMS of every block.

    norms_Y = layer_grad_norms(grads)                        # one L2 norm per block layer
    rms_Y = activation_rms(out.hidden_states, mask_BL)       # [embeddings, block 0, ...]

They show where gradients vanish or explode and how the residual stream grows with depth
(the curriculum's "residual connections on and off", tests/model/test_residual.py). With
`train.layer_stats=true` every step's record in metrics.jsonl carries
`layer{i:02d}/grad_norm` (computed inside the jitted step from the gradients it already
has: a per-layer reduction, no extra pass over the model) and, on the run's first step,
every `log_every`-th step and the last, `embed/act_rms` and `layer{i:02d}/act_rms`
(`make_activation_stats`: one extra deterministic forward of that step's batch with the
params the step starts from, run outside the step). With the flag off nothing changes.

What "a layer" is: layer i is slice i of every leaf under a `blocks` subtree, the stacked
Transformer blocks (leading axis Y = n_layers), or element i of the decode layout's tuple
(`llm.model.unstack_layers`). A train-state tree is a dict of components (trainable.py):
the layer's norm then covers every component's `blocks` leaves, so under PEFT it is the
norm of the *trained* leaves of that layer (LoRA's A and B, a partly frozen block's
unfrozen weights); leaves outside `blocks` (embeddings, heads, soft prompts) belong to no
layer. Only the Transformer arch has stacked blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from llm.sharding import with_activation_sharding
from llm.sharding.init import ShardingPlan
from llm.train.losses.base import Batch
from llm.train.trainable import model_forward
from llm.typing import Array, PyTree

BLOCKS = "blocks"


def block_trees(tree: PyTree) -> list[tuple[str, Any]]:
    """(path, subtree) of each `blocks` subtree of `tree`: the tree's own (a decoder's
    params) or, in a dict of components (a train state's params or grads), each
    component's. Raises when there is none."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"expected a params-shaped dict, got {type(tree).__name__}")
    if BLOCKS in tree:
        return [(BLOCKS, tree[BLOCKS])]
    found = [
        (f"{name}/{BLOCKS}", sub[BLOCKS])
        for name, sub in tree.items()
        if isinstance(sub, Mapping) and BLOCKS in sub
    ]
    if not found:
        raise ValueError(
            f"no {BLOCKS!r} subtree (stacked Transformer blocks) in a tree with keys "
            f"{sorted(tree)}: per-layer statistics need the Transformer arch, and under "
            "PEFT or train.freeze at least one trained leaf inside the blocks"
        )
    return found


def _layer_sumsq(path: str, blocks: Any) -> Array:
    """[Y] sums of squares (float32) of one `blocks` subtree, stacked or a tuple of layers."""
    if isinstance(blocks, tuple | list):
        return jnp.stack([_total_sumsq(layer) for layer in blocks])
    leaves = jax.tree_util.tree_leaves_with_path(blocks)
    if not leaves:
        raise ValueError(f"{path} holds no arrays")
    n_layers = {leaf.shape[0] if leaf.ndim else None for _, leaf in leaves}
    if len(n_layers) != 1 or None in n_layers:
        shapes = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}
        raise ValueError(f"{path} is not stacked along one leading layer axis: {shapes}")
    return sum(
        jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim))) for _, x in leaves
    )


def _total_sumsq(tree: PyTree) -> Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def layer_grad_norms(tree: PyTree) -> Array:
    """norms_Y: the global L2 norm of each block layer's slice of `tree` (grads or params,
    float32), over all of its `blocks` subtrees (see the module docstring)."""
    parts = [_layer_sumsq(path, blocks) for path, blocks in block_trees(tree)]
    sizes = {int(p.shape[0]) for p in parts}
    if len(sizes) != 1:
        paths = [path for path, _ in block_trees(tree)]
        raise ValueError(f"the blocks subtrees {paths} have different layer counts {sorted(sizes)}")
    return jnp.sqrt(sum(parts))


def activation_rms(hidden_states_YBLD: Array, mask_BL: Array | None = None) -> Array:
    """rms_Y: the root mean square of each layer's hidden states over the batch's real tokens
    (`mask_BL` true or nonzero; None = all) and the model dimension, in float32.

    `hidden_states_YBLD` is `forward(..., return_hidden_states=True).hidden_states`:
    index 0 the embedding output, then each block's output."""
    h = jnp.asarray(hidden_states_YBLD)
    if h.ndim != 4:
        raise ValueError(f"hidden_states_YBLD must be [Y, B, L, D], got shape {h.shape}")
    sq_YBL = jnp.mean(jnp.square(h.astype(jnp.float32)), axis=-1)
    if mask_BL is None:
        return jnp.sqrt(jnp.mean(sq_YBL, axis=(1, 2)))
    mask_BL = jnp.asarray(mask_BL)
    if mask_BL.shape != h.shape[1:3]:
        raise ValueError(f"mask_BL has shape {mask_BL.shape}; the hidden states' [B, L] is "
                         f"{h.shape[1:3]}")  # fmt: skip
    w_BL = (mask_BL != 0).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(sq_YBL * w_BL, axis=(1, 2)) / jnp.maximum(jnp.sum(w_BL), 1.0))


def grad_norm_metrics(norms_Y: Array) -> dict[str, Array]:
    """{"layer00/grad_norm": ..., ...}: the metrics.jsonl keys of `layer_grad_norms`."""
    return {f"layer{i:02d}/grad_norm": norms_Y[i] for i in range(norms_Y.shape[0])}


def act_rms_metrics(rms_Y: Array) -> dict[str, Array]:
    """{"embed/act_rms": rms_Y[0], "layer00/act_rms": rms_Y[1], ...}."""
    keys = ["embed/act_rms"] + [f"layer{i:02d}/act_rms" for i in range(rms_Y.shape[0] - 1)]
    return {k: rms_Y[i] for i, k in enumerate(keys)}


def check_layer_stats(cfg: Any) -> None:
    """Refuses `train.layer_stats` for a model without stacked Transformer blocks. Checked
    when the run is built, not by the config: `train.init_from` may bring the model."""
    if cfg.train.layer_stats and cfg.model.arch != "transformer":
        raise ValueError(
            f"train.layer_stats=true reports per-block statistics of the Transformer's stacked "
            f"blocks; model.arch={cfg.model.arch!r} has none (set train.layer_stats=false)"
        )


ActivationStats = Callable[[PyTree, PyTree, Batch], dict[str, Array]]


def make_activation_stats(
    cfg: Any, batch_axes: Mapping[str, tuple], trained: PyTree, plan: ShardingPlan | None = None
) -> ActivationStats:
    """(params, frozen, batch) -> {"embed/act_rms", "layer{i:02d}/act_rms"}, jitted: one
    deterministic forward of the batch's `inputs` (with its positions and segment ids, padding
    masked out) through the run's decoder, adapters included (`model_forward`).

    A second forward rather than hidden states threaded out of the loss: every loss would
    have to return them, through gradient accumulation, for the few steps that log them. Run
    apart, the step gains no forward and this one runs on the logged steps only.

    `trained`: the run's (abstract) params tree, checked to hold trained block leaves so the
    step's grad norms exist (`block_trees`); `plan`: the run's mesh, whose activation
    sharding rules the forward then follows as the loss does."""
    check_layer_stats(cfg)
    try:
        block_trees(trained)
    except ValueError as err:
        raise ValueError(f"train.layer_stats=true: {err}") from None
    if len(batch_axes.get("inputs", ())) != 2:
        raise ValueError(
            "train.layer_stats reads the activations of `inputs` [B, L]; this loss's batch has "
            f"inputs with axes {batch_axes.get('inputs')}"
        )

    def stats(params: PyTree, frozen: PyTree, batch: Batch) -> dict[str, Array]:
        segments = batch.get("segment_ids")
        out = model_forward(cfg.model, params, frozen, batch["inputs"],
                            positions_BL=batch.get("positions"), segment_ids_BL=segments,
                            return_logits=False, return_hidden_states=True)  # fmt: skip
        return act_rms_metrics(activation_rms(out.hidden_states, segments))

    if plan is not None:
        stats = with_activation_sharding(stats, plan.mesh, plan.rules)
    return jax.jit(stats)

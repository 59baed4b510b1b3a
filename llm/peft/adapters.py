"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751) after frozen sub-layers.

    tree, axes = init_adapters(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    extras = adapter_extras(tree)   # each adapted sub-layer's output h becomes
                                    # h + up(relu(down(h))) before the residual add

Placement (`peft.adapter_placement`): "houlsby" adapts the attention and the MLP output of
every block (the paper's Figure 2); "pfeiffer" the MLP output only, the cheaper placement
Pfeiffer et al. found as good (AdapterFusion, arXiv:2005.00247, sec. 3.3 and App. B).

Per site, stacked over the layers: down [Y, D, R] normal with std 1/sqrt(D), its bias [Y, R],
up [Y, R, D] and its bias [Y, D] zero, so at step 0 every adapter returns its input exactly
and the model is the base model bit for bit (the paper's near-identity initialisation,
made exact). R is `peft.adapter_dim`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.model.extras import Extras
from llm.typing import PyTree

NAME = "adapter"  # the component's name in the params / frozen trees
SITES = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}
SITE_AXES = {
    "down": PartitionSpec("layers", "embed", None),
    "down_b": PartitionSpec("layers", None),
    "up": PartitionSpec("layers", None, "embed"),
    "up_b": PartitionSpec("layers", "embed"),
}


def adapter_axes(cfg: PeftConfig, model: PyTree, axes: PyTree) -> PyTree:
    """The model dimension shards like the decoder's; the bottleneck axis is unsharded."""
    del model, axes
    return {site: dict(SITE_AXES) for site in SITES[cfg.adapter_placement]}


def init_adapters(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(tree, axes): one down/up pair per placed site, `up` zero (step 0 is the base)."""
    y = model["blocks"]["attn"]["k"]["w"].shape[0]
    dtype, d = model["token_embed"].dtype, model["token_embed"].shape[1]
    r, sites = cfg.adapter_dim, SITES[cfg.adapter_placement]
    tree = {
        site: {
            "down": jax.random.normal(k, (y, d, r), dtype) / math.sqrt(d),
            "down_b": jnp.zeros((y, r), dtype),
            "up": jnp.zeros((y, r, d), dtype),
            "up_b": jnp.zeros((y, d), dtype),
        }
        for site, k in zip(sites, jax.random.split(key, len(sites)), strict=True)
    }
    return tree, adapter_axes(cfg, model, axes)


def adapter_extras(tree: PyTree) -> Extras:
    return Extras(adapters=tree)


def n_trainable(tree: PyTree) -> int:
    """sites * layers * (2 * d_model * R + R + d_model)."""
    return sum(x.size for x in jax.tree.leaves(tree))

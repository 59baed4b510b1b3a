"""Prefix tuning (Li & Liang 2021, arXiv:2101.00190): learned keys and values per layer.

    tree, axes = init_prefix(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    extras = prefix_extras(tree)   # k, v [layers, P, kv_heads, head_dim] for every attention

Every query of every packed document attends to the P prefix entries before its own keys
(llm/model/extras.py). As in Hugging Face PEFT, where the prefix is the KV cache of P
virtual tokens, the keys are never rotated by RoPE (they are learned in the rotated space)
and the real tokens sit at positions P + p. With grouped-query attention the prefix has the
kv heads' shape, so each kv head's prefix serves its group of query heads.

Two parameterisations (`peft.prefix_projection`):
* 0: the keys and values themselves, normal with std 1 (PEFT's embedding init).
* h > 0: the paper's reparameterisation for stable training (sec. 4.3): P embeddings
  [P, d_model] through an MLP d_model -> h -> 2 * layers * kv_heads * head_dim with tanh.
  Its output can be kept and the MLP dropped after training (`direct`).

Step 0 is not the base model: a prefix key always takes some softmax mass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.model.extras import Extras
from llm.typing import PyTree

NAME = "prefix"  # the component's name in the params / frozen trees
KV_AXES = ("layers", None, "kv_heads", "head_dim")  # [Y, P, K, H]


def _kv_shape(model: PyTree) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from the decoder's key projection [Y, D, K, H]."""
    y, _, k, h = model["blocks"]["attn"]["k"]["w"].shape
    return y, k, h


def prefix_axes(cfg: PeftConfig, model: PyTree, axes: PyTree) -> PyTree:
    del model, axes
    if not cfg.prefix_projection:
        return {"k": PartitionSpec(*KV_AXES), "v": PartitionSpec(*KV_AXES)}
    out = {"w": PartitionSpec(None, "layers", "kv_heads", "head_dim"),
           "b": PartitionSpec("layers", "kv_heads", "head_dim")}  # fmt: skip
    return {
        "tokens": PartitionSpec(None, "embed"),
        "hidden": {"w": PartitionSpec("embed", None), "b": PartitionSpec(None)},
        "k": out,
        "v": dict(out),
    }


def _normal(key: jax.Array, shape: tuple[int, ...], dtype, fan_in: int = 1) -> jax.Array:
    return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)


def init_prefix(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(tree, axes) of the prefix, or of its MLP reparameterisation, in the decoder's dtype."""
    (y, k, h), P, hid = _kv_shape(model), cfg.n_virtual_tokens, cfg.prefix_projection
    dtype, d = model["token_embed"].dtype, model["token_embed"].shape[1]
    k_tok, k_hid, k_k, k_v = jax.random.split(key, 4)
    if not hid:
        tree = {"k": _normal(k_k, (y, P, k, h), dtype), "v": _normal(k_v, (y, P, k, h), dtype)}
        return tree, prefix_axes(cfg, model, axes)
    tree = {
        "tokens": _normal(k_tok, (P, d), dtype),
        "hidden": {"w": _normal(k_hid, (d, hid), dtype, d), "b": jnp.zeros((hid,), dtype)},
        **{
            name: {"w": _normal(kk, (hid, y, k, h), dtype, hid), "b": jnp.zeros((y, k, h), dtype)}
            for name, kk in (("k", k_k), ("v", k_v))
        },
    }
    return tree, prefix_axes(cfg, model, axes)


def direct(tree: PyTree) -> dict[str, jax.Array]:
    """{"k", "v"} [Y, P, K, H]: the tree itself, or its MLP's output (Li & Liang eq. 5)."""
    if "tokens" not in tree:
        return {"k": tree["k"], "v": tree["v"]}
    hid = tree["hidden"]
    z_PE = jnp.tanh(tree["tokens"] @ hid["w"] + hid["b"])
    return {
        n: jnp.einsum("PE,EYKH->YPKH", z_PE, tree[n]["w"]) + tree[n]["b"][:, None]
        for n in ("k", "v")
    }


def prefix_extras(tree: PyTree) -> Extras:
    kv = direct(tree)
    return Extras(prefix_k_YPKH=kv["k"], prefix_v_YPKH=kv["v"])


def n_trainable(tree: PyTree) -> int:
    """2 * layers * P * kv_heads * head_dim, or the MLP's size with the projection."""
    return sum(x.size for x in jax.tree.leaves(tree))

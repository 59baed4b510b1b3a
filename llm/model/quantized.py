"""Param trees with quantized leaves: which weights can be quantized, and how they are stored.

    q_params = quantize_params(cfg, params, fmt="int8", bits=8, group=0)   # round to nearest
    forward(cfg, q_params, tokens_BL)          # the model multiplies by the QArrays directly

A quantized leaf is a `llm.ops.quantized.QArray` in place of the float weight; everything
else (norms, biases, position tables) stays float. Which layout a weight has, its contracted
input axes and output axes, comes from the model definition itself (`weight_layouts`: every
`Linear`'s einsum, the token table read along D, the untied head [D, V]), so a new layer type
is quantizable the moment it uses `Linear`.

On disk (an `llm convert`-style model directory, llm/interop/model_dir.py) a QArray is saved
as the plain dict {"codes", "scales"[, "offsets"]} (`storable`), and its static fields as a
JSON manifest (quantization.json, `manifest`), from which `abstract_quantized` rebuilds the
tree orbax restores into. Logical axes (`quantized_axes`): the codes keep the weight's axes (a
4-bit weight's last axis is halved by the packing, so a split of n devices along it needs the
axis divisible by 2n); the scales keep the lead and output axes, and their short groups axis
is never sharded. Nothing places a quantized model on a mesh yet: eval, generate and serve
load it onto one device (`load_model` accepts quantized-shaped shardings).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from llm.config import ModelConfig
from llm.model.functional import abstract_model
from llm.model.layers import Linear
from llm.ops import quantized
from llm.ops.quantized import NIBBLE_FORMATS, QArray
from llm.typing import PyTree

BLOCK_LINEARS = r"^blocks/(attn|mlp)/\w+/w$"  # every Linear weight of the blocks
EMBEDDINGS = r"^(token_embed|lm_head)$"  # the token table and an untied output head
MANIFEST = "quantization.json"  # beside params/ in a model directory
STATIC = ("fmt", "bits", "group", "n_in", "n_out", "dtype", "act_bits")


@functools.lru_cache(maxsize=16)
def weight_layouts(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """{param path: (n_in, n_out)} of every weight that can be quantized: each `Linear`'s
    (its contracted axes, the rest after the stacked layers axis), the token table (1, 0)
    and an untied head (1, 1). The classical baselines are refused here, the one door of
    quantization, pruning and GGUF tensor layouts: their weights are no `Linear`s."""
    if cfg.arch != "transformer":
        raise ValueError(
            f"quantization and pruning act on a Transformer's Linear layers; model.arch="
            f"{cfg.arch!r} has none (its weights stay in param_dtype)"
        )
    if cfg.n_experts:  # the stacked expert weights [E, D, F] are no Linears: they'd be skipped
        raise ValueError(
            f"quantization, pruning and GGUF act on Linear layers; the {cfg.n_experts} experts "
            "of a mixture-of-experts MLP (model.n_experts) are stacked weights, not supported"
        )
    model = abstract_model(cfg)
    out: dict[str, tuple[int, int]] = {"token_embed": (1, 0)}
    if model.lm_head is not None:
        out["lm_head"] = (1, 1)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Linear):
            name = "/".join(map(str, path)) + "/w"
            n_lead = 1 if path and path[0] == "blocks" else 0
            out[name] = (node.n_in, len(node.w.get_value().shape) - n_lead - node.n_in)
    return out


def path_of(keys: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


_quantize = jax.jit(
    quantized.quantize, static_argnames=("fmt", "bits", "group", "n_in", "n_out", "act_bits")
)


def quantize_params(
    cfg: ModelConfig,
    params: PyTree,
    *,
    fmt: str,
    bits: int,
    group: int,
    targets: str = BLOCK_LINEARS,
    act_bits: int | None = None,
) -> PyTree:
    """`params` with every weight whose path matches `targets` quantized to nearest."""
    layouts = weight_layouts(cfg)
    chosen = [p for p in layouts if re.search(targets, p)]
    if not chosen:
        raise ValueError(f"quantize: {targets!r} matches no quantizable weight ({list(layouts)})")

    def one(keys, leaf):
        name = path_of(keys)
        if name not in chosen or quantized.is_qarray(leaf):
            return leaf
        n_in, n_out = layouts[name]
        try:
            return _quantize(leaf, fmt=fmt, bits=bits, group=group, n_in=n_in, n_out=n_out,
                             act_bits=act_bits)  # fmt: skip
        except ValueError as err:
            raise ValueError(f"quantize {name} {tuple(leaf.shape)}: {err}") from None

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=quantized.is_qarray)


def _qarrays(tree: PyTree) -> dict[str, QArray]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=quantized.is_qarray)[0]
    return {path_of(k): v for k, v in flat if quantized.is_qarray(v)}


def manifest(params: PyTree) -> dict[str, dict[str, Any]]:
    """{path: static fields, shape and scales dtype} of every QArray in `params` (JSON-able)."""
    return {
        name: {
            **{f: getattr(q, f) for f in STATIC},
            "shape": list(q.shape),
            "scales_dtype": str(jnp.dtype(q.scales.dtype)),
        }
        for name, q in _qarrays(params).items()
    }


def storable(params: PyTree) -> PyTree:
    """QArrays as plain dicts {"codes", "scales"[, "offsets"]}: what orbax saves."""

    def plain(x):
        if not quantized.is_qarray(x):
            return x
        out = {"codes": x.codes, "scales": x.scales}
        return out if x.offsets is None else {**out, "offsets": x.offsets}

    return jax.tree.map(plain, params, is_leaf=quantized.is_qarray)


def from_storable(tree: PyTree, spec: dict[str, dict[str, Any]]) -> PyTree:
    """The inverse of `storable`, given the manifest."""
    return _replace(tree, spec, lambda d, s: QArray(d["codes"], d["scales"], d.get("offsets"),
                                                    **{f: s[f] for f in STATIC}))  # fmt: skip


def abstract_quantized(abstract: PyTree, spec: dict[str, dict[str, Any]]) -> PyTree:
    """The float model's abstract tree with the manifest's QArrays (of `ShapeDtypeStruct`s)."""

    def one(w: jax.ShapeDtypeStruct, s: dict[str, Any]) -> QArray:
        shape = tuple(s["shape"])
        if tuple(w.shape) != shape:
            raise ValueError(f"quantization manifest: shape {shape} but the model has {w.shape}")
        n_lead = len(shape) - s["n_in"] - s["n_out"]
        K = math.prod(shape[n_lead : len(shape) - s["n_out"]])
        nibble = s["fmt"] in NIBBLE_FORMATS
        codes = jax.ShapeDtypeStruct((*shape[:-1], shape[-1] // (2 if nibble else 1)),
                                     jnp.uint8 if nibble else jnp.int8)  # fmt: skip
        scale_shape = (*shape[:n_lead], K // s["group"], *shape[len(shape) - s["n_out"] :])
        scales = jax.ShapeDtypeStruct(scale_shape, s["scales_dtype"])
        offsets = scales if s["fmt"] == "uint4" else None
        return QArray(codes, scales, offsets, **{f: s[f] for f in STATIC})

    return _replace(abstract, spec, one)


def quantized_axes(axes: PyTree, spec: dict[str, dict[str, Any]]) -> PyTree:
    """Logical axes of a quantized tree: QArray nodes of `PartitionSpec`s."""

    def one(p: PartitionSpec, s: dict[str, Any]) -> QArray:
        names = tuple(p)
        n_lead = len(names) - s["n_in"] - s["n_out"]
        scales = PartitionSpec(*names[:n_lead], None, *names[len(names) - s["n_out"] :])
        offsets = scales if s["fmt"] == "uint4" else None
        return QArray(p, scales, offsets, **{f: s[f] for f in STATIC})

    return _replace(axes, spec, one)


def _replace(tree: PyTree, spec: dict[str, dict[str, Any]], make) -> PyTree:
    """`tree` with the node at each manifest path replaced by make(node, its spec)."""
    missing = [name for name in spec if get_path(tree, name) is None]
    if missing:
        raise ValueError(f"quantization manifest names weights the model lacks: {missing}")

    def walk(node, prefix):
        if prefix in spec:
            return make(node, spec[prefix])
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}/{k}" if prefix else str(k)) for k, v in node.items()}
        return node

    return walk(tree, "")


def get_path(tree: PyTree, name: str) -> Any:
    """The node at `name` ("blocks/attn/q/w") of a nested dict, or None if it has none."""
    for key in name.split("/"):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def param_bytes(params: PyTree) -> int:
    """Bytes of every array in `params`, codes, scales and offsets included."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))

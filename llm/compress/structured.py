"""Structured pruning that shrinks the model: attention heads and MLP channels removed.

    spec = StructuredSpec(heads=3, mlp=512)       # removed per layer
    new_cfg, params, kept = prune_structured(cfg, params, tokens_BL, spec)
    # new_cfg: smaller n_heads / n_kv_heads / d_ff; params: the smaller arrays

Every layer loses the same number of heads and channels, because the layers are stacked along
one axis (scan), so they must keep one shape; which ones go is chosen per layer.

Importance, from calibration activations (llm/compress/calibration.py), layer by layer on the
outputs of the already-shrunk layers before it:
- a head's importance is the l2 norm, over the calibration tokens, of its contribution to the
  residual stream, X_h @ W_o[h] (the head output norm of Michel et al. 2019, arXiv:1905.10650,
  measured after the output projection so heads with large W_o count as they act); computed
  as sum((X_h^T X_h) * (W_o[h] W_o[h]^T)) without forming the [M, H, D] products;
- an MLP channel's importance is the norm of its rank-one contribution,
  ||X[:, f]||_2 * ||W_down[f, :]||_2 (as in LLM-Pruner's first-order "channel" group,
  Ma et al. 2023, arXiv:2305.11627, with activations in place of gradients).

Under grouped-query attention a query head reads its group's key/value head (head n uses kv
head n // (n_heads / n_kv_heads)). `kv_mode="groups"` (default) removes whole KV groups (the
least important by the summed importance of their query heads): heads must be a multiple of
the group size, and the KV cache shrinks too. `kv_mode="per_group"` removes the same number of
query heads from every group (the least important of each) and keeps every KV head. Under MHA
(one head per group) the two coincide.

Arrays are sliced by their logical axes ("heads", "kv_heads", "mlp"), so biases and any future
leaf on those axes follow the weights; q/k norms act per head_dim and stay. The smaller model
computes exactly what the original does with the removed heads' W_o rows and the removed
channels' W_down rows set to zero (`mask_structure`), which the tests check.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from tqdm import tqdm

from llm.compress import calibration
from llm.config import ModelConfig
from llm.model import logical_axes
from llm.model.quantized import weight_layouts
from llm.typing import Array, PyTree

KV_MODES = ("groups", "per_group")


@dataclasses.dataclass(frozen=True)
class StructuredSpec:
    """How much to remove from every layer, and the calibration it is chosen on."""

    heads: int = 0  # query heads removed per layer
    mlp: int = 0  # MLP channels (of d_ff) removed per layer
    kv_mode: str = "groups"  # groups: whole KV groups | per_group: equal query heads per group
    n_calib: int = 64  # calibration sequences
    calib_len: int = 256  # tokens per calibration sequence
    seed: int = 0  # which calibration windows are drawn

    def __post_init__(self) -> None:
        if self.kv_mode not in KV_MODES:
            raise ValueError(f"prune: kv_mode {self.kv_mode!r} is not one of {KV_MODES}")
        if self.heads < 0 or self.mlp < 0 or self.heads + self.mlp == 0:
            raise ValueError(f"prune: remove some heads or MLP channels (heads={self.heads}, "
                             f"mlp={self.mlp}; both >= 0)")  # fmt: skip


def shrunk_config(cfg: ModelConfig, spec: StructuredSpec) -> ModelConfig:
    """The model config after removing `spec.heads` heads and `spec.mlp` channels per layer."""
    weight_layouts(cfg)  # refuses a model without a Transformer's heads and MLPs by name
    n_q, n_kv = cfg.n_heads, cfg.kv_heads
    group = n_q // n_kv
    if spec.heads and cfg.pos_encoding == "alibi":
        raise ValueError(
            "prune: ALiBi's slopes follow the head count (llm/ops/masks.py), so "
            "removing heads would change the kept heads' biases; prune --mlp only"
        )
    if spec.heads >= n_q or spec.mlp >= cfg.d_ff:
        raise ValueError(f"prune: cannot remove {spec.heads} of {n_q} heads / {spec.mlp} of "
                         f"{cfg.d_ff} MLP channels: something must remain")  # fmt: skip
    if spec.kv_mode == "groups" or group == 1:
        if spec.heads % group:
            raise ValueError(f"prune: kv_mode=groups removes whole KV groups of {group} query "
                             f"heads; heads={spec.heads} is not a multiple of {group}")  # fmt: skip
        new_kv = n_kv - spec.heads // group
    else:
        if spec.heads % n_kv:
            raise ValueError(f"prune: kv_mode=per_group removes as many heads from each of the "
                             f"{n_kv} KV groups; heads={spec.heads} is not a multiple")  # fmt: skip
        new_kv = n_kv
    return dataclasses.replace(
        cfg,
        n_heads=n_q - spec.heads,
        n_kv_heads=None if cfg.n_kv_heads is None and new_kv == n_q - spec.heads else new_kv,
        head_dim=cfg.head_size,
        d_ff=cfg.d_ff - spec.mlp,
    )


def head_importance(x_MK: Array, w_o: Array) -> Array:
    """[H]: ||X_h @ W_o[h]||_F per head; x_MK the o-projection's input (heads concatenated),
    w_o [H, head_dim, D]."""
    n_heads, head_dim = w_o.shape[:2]
    x_MHk = x_MK.astype(jnp.float32).reshape(-1, n_heads, head_dim)
    gram_Hkk = jnp.einsum("MHk,MHj->Hkj", x_MHk, x_MHk)
    wwt_Hkk = jnp.einsum("HkD,HjD->Hkj", w_o.astype(jnp.float32), w_o.astype(jnp.float32))
    return jnp.sqrt(jnp.maximum(jnp.sum(gram_Hkk * wwt_Hkk, axis=(1, 2)), 0.0))


def channel_importance(x_MF: Array, w_down: Array) -> Array:
    """[F]: ||X[:, f]||_2 * ||W_down[f, :]||_2, the norm of channel f's contribution."""
    x_norm = jnp.linalg.norm(x_MF.astype(jnp.float32), axis=0)
    return x_norm * jnp.linalg.norm(w_down.astype(jnp.float32).reshape(x_MF.shape[1], -1), axis=1)


def _keep_top(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Sorted indices of the `n_keep` highest scores (ties: the earlier index kept)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:n_keep])


def select_heads(imp_H: Array, n_kv: int, new_cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(kept query heads, kept KV heads) as sorted indices, from head importances [H]."""
    imp = np.asarray(imp_H, np.float64)
    group = imp.size // n_kv
    imp_G = imp.reshape(n_kv, group)
    if new_cfg.kv_heads < n_kv:  # whole groups
        kv = _keep_top(imp_G.sum(axis=1), new_cfg.kv_heads)
        return (kv[:, None] * group + np.arange(group)).reshape(-1), kv
    per = new_cfg.n_heads // n_kv
    q = [g * group + _keep_top(imp_G[g], per) for g in range(n_kv)]
    return np.concatenate(q), np.arange(n_kv)


def slice_layer(layer: PyTree, layer_axes: PyTree, keep: dict[str, np.ndarray]) -> PyTree:
    """One block's tree with every axis named in `keep` ("heads", "kv_heads", "mlp") cut to
    the kept indices."""

    def cut(x: Array, axes: PartitionSpec) -> Array:
        for dim, name in enumerate(axes):
            if name in keep:
                x = jnp.take(x, jnp.asarray(keep[name]), axis=dim)
        return x

    return jax.tree.map(cut, layer, layer_axes, is_leaf=lambda a: isinstance(a, PartitionSpec))


def _layer_axes(cfg: ModelConfig) -> PyTree:
    """Logical axes of one block (the stacked ones without their leading "layers")."""
    return jax.tree.map(lambda a: PartitionSpec(*a[1:]), logical_axes(cfg)["blocks"],
                        is_leaf=lambda a: isinstance(a, PartitionSpec))  # fmt: skip


def prune_structured(
    cfg: ModelConfig, params: PyTree, tokens_BL: Array, spec: StructuredSpec
) -> tuple[ModelConfig, PyTree, dict[str, np.ndarray]]:
    """(smaller config, its params, kept indices {"heads": [Y, H'], "kv_heads": [Y, K'],
    "mlp": [Y, F']}) after removing the least important heads and channels of every layer."""
    new_cfg = shrunk_config(cfg, spec)
    axes = _layer_axes(cfg)
    x_BLD = calibration.embed_inputs(cfg, params, tokens_BL)
    layers, kept = [], {"heads": [], "kv_heads": [], "mlp": []}
    for i in tqdm(range(cfg.n_layers), desc="prune structure", unit="layer"):
        layer = calibration.layer_params(params, i)
        inputs = calibration.linear_inputs(cfg, layer, x_BLD)
        imp_H = head_importance(inputs["attn/o/w"], layer["attn"]["o"]["w"])
        heads, kv = select_heads(imp_H, cfg.kv_heads, new_cfg)
        imp_F = channel_importance(inputs["mlp/down/w"], layer["mlp"]["down"]["w"])
        mlp = _keep_top(np.asarray(imp_F), new_cfg.d_ff)
        keep = {"heads": heads, "kv_heads": kv, "mlp": mlp}
        layer = slice_layer(layer, axes, keep)
        layers.append(layer)
        for name, idx in keep.items():
            kept[name].append(idx)
        x_BLD = calibration.run_layer(new_cfg, layer, x_BLD)
    blocks = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return new_cfg, {**params, "blocks": blocks}, {k: np.stack(v) for k, v in kept.items()}


def mask_structure(cfg: ModelConfig, params: PyTree, kept: dict[str, np.ndarray]) -> PyTree:
    """The original-sized params with the removed heads' W_o rows and the removed channels'
    W_down rows zeroed: what the smaller model computes, at the original size."""
    blocks = params["blocks"]
    n_layers = blocks["attn"]["o"]["w"].shape[0]
    head_on = np.zeros((n_layers, cfg.n_heads), bool)
    mlp_on = np.zeros((n_layers, cfg.d_ff), bool)
    np.put_along_axis(head_on, kept["heads"], True, axis=1)
    np.put_along_axis(mlp_on, kept["mlp"], True, axis=1)
    w_o, w_down = blocks["attn"]["o"]["w"], blocks["mlp"]["down"]["w"]
    attn = {**blocks["attn"], "o": {**blocks["attn"]["o"],
                                    "w": w_o * head_on[:, :, None, None]}}  # fmt: skip
    mlp = {**blocks["mlp"], "down": {**blocks["mlp"]["down"], "w": w_down * mlp_on[:, :, None]}}
    return {**params, "blocks": {**blocks, "attn": attn, "mlp": mlp}}

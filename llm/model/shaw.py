"""Relative position representations (Shaw, Uszkoreit & Vaswani 2018, arXiv:1803.02155).

`model.pos_encoding=shaw`: no absolute position enters the model; instead every layer learns
two tables of 2k + 1 vectors (k = `model.shaw_max_distance`), w^K and w^V, and attention reads
the edge between query i and key j as a^K_ij = w^K_clip(j - i, k), a^V_ij = w^V_clip(j - i, k):

    e_ij = q_i . (k_j + a^K_ij) / sqrt(H)          (eq. 4)
    z_i  = sum_j softmax_j(e_ij) (v_j + a^V_ij)    (eq. 3)

Design choices:
* The tables are shared by the heads of a layer, as in the paper (sec. 3.3), and learned per
  layer; clipping makes them a fixed size and lets the model generalise beyond distance k
  (sec. 3.2).
* Distances come from positions, not indices, so packed documents (positions restart) and
  decoding against a KV cache (the cache slot is the position) read the same entries, and
  shifting every position leaves the output unchanged.
* The terms are computed by the reference attention (`llm.ops.attention_xla`), gathering
  [B, L, S, H] relative vectors: memory grows as L * S * H, fine for the curriculum's short
  contexts. Other backends refuse `shaw_tables` by name (the config refuses them first).
"""

from __future__ import annotations

from flax import nnx

from llm.config import ModelConfig
from llm.model.layers import normal, param
from llm.typing import Array


class ShawTables(nnx.Module):
    """One layer's w^K and w^V: [2k + 1, head_dim] each, row k + d for distance d = j - i."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        shape = (2 * cfg.shaw_max_distance + 1, cfg.head_size)
        axes, init = ("position", "head_dim"), normal(cfg.init_std)
        self.k_RH = param(rngs, init, shape, axes, cfg.param_dtype)
        self.v_RH = param(rngs, init, shape, axes, cfg.param_dtype)

    def tables(self, dtype) -> tuple[Array, Array]:
        """(w^K, w^V) in the activation dtype, the `shaw_tables` of `llm.ops.attention`."""
        return self.k_RH[...].astype(dtype), self.v_RH[...].astype(dtype)

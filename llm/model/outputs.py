"""What the model and its layers return: small dataclasses, never array-or-tuple.

Every layer (a block, and the attention and MLP inside it) returns a `LayerOutput`, so a
layer that gains state or a loss changes no caller's unpacking: an MoE MLP reports its
load-balancing loss (Shazeer et al., 2017, arXiv:1701.06538; Fedus et al., 2022,
arXiv:2101.03961) in `aux_losses`, and the block, the layer loop and the training loss carry
it to the gradient without another code path. The layer loop sums each name over the layers
into `ModelOutput.aux_losses`; dense layers return none, so dense models are unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from llm.typing import Array


@struct.dataclass
class LayerOutput:
    """One layer's result.

    hidden_BLD: the block's new residual stream, or a sublayer's branch output.
    cache: the layer's updated decoding state (`attention.LayerCache`) when it was given
      one, else None.
    aux_losses: named scalar losses this layer adds to the objective (summed over layers).
    attention_BNLS: the attention probabilities [B, N heads, L queries, S keys] in float32,
      when the forward asked for them (`return_attention`), else None.
    """

    hidden_BLD: Array
    cache: Any = None
    aux_losses: dict[str, Array] = struct.field(default_factory=dict)
    attention_BNLS: Array | None = None


@struct.dataclass
class ModelOutput:
    """What a forward pass returns.

    logits_BLV: next-token logits (None when return_logits=False, e.g. for chunked losses).
    hidden_BLD: the final hidden state, the input of the output layer.
    hidden_states: [Y+1, B, L, D] when requested: the embedding output, then each block's.
    aux_losses: named auxiliary losses, each summed over the layers (empty for dense models;
      MoE adds load balancing). The training loss adds them, weighted like its tokens.
    cache: the updated cache (`llm.model.cache.Cache`) when the forward was given one.
    attention_YBNLS: [Y layers, B, N heads, L queries, S keys] attention probabilities
      (float32, the reference backend's) when requested with `return_attention`: each row
      sums to one over the keys the query may see and is zero elsewhere.
    """

    logits_BLV: Array | None
    hidden_BLD: Array
    hidden_states: Array | None = None
    aux_losses: dict[str, Array] = struct.field(default_factory=dict)
    cache: Any = None
    attention_YBNLS: Array | None = None


def merge_aux(*losses: dict[str, Array]) -> dict[str, Array]:
    """The named losses of several sublayers in one dict; a name given twice is summed."""
    total: dict[str, Array] = {}
    for named in losses:
        for name, value in named.items():
            total[name] = total[name] + value if name in total else value
    return total


def sum_layers(aux_Y: dict[str, Array]) -> dict[str, Array]:
    """Per-layer losses stacked along a leading layers axis (the layer loop's outputs),
    summed over it in float32 so that many small bf16 terms do not round away."""
    return jax.tree.map(lambda a: jnp.sum(a.astype(jnp.float32), axis=0), aux_Y)

"""Learned inputs that change a frozen decoder's forward pass without changing its weights.

Three parameter-efficient fine-tuning methods cannot be merged into W, so the model takes
them as an `Extras` argument of `forward` (llm/peft builds it from the run's adapter tree):

* prompt tuning (Lester et al. 2021, arXiv:2104.08691): P learned vectors `prompt_PD`
  prepended to every sequence's token embeddings. The virtual tokens run through every
  layer; the output covers the real tokens only, so a loss never sees them.
* prefix tuning (Li & Liang 2021, arXiv:2101.00190): learned keys and values per layer,
  `prefix_k_YPKH` / `prefix_v_YPKH`, that every query attends to before its own keys.
* bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751): h + up(act(down(h))) on the
  output of each adapted sub-layer ("attn", "mlp") before it joins the residual stream.

Virtual tokens and prefixes must be seen by *every* document of a packed row, so they carry
the segment id `SHARED` (-1): a key in segment `SHARED` is visible to every non-padding
query at a later or equal position (`shared_mask`). Real tokens move P positions on
(position p becomes P + p), as Hugging Face PEFT runs both methods: the virtual tokens or
the prefix occupy positions 0..P-1 ahead of each document. Prefix keys are never rotated by
RoPE; they are learned in the rotated space, as PEFT's prefix lives in the KV cache.

Letters: Y layers, P virtual tokens, K kv heads, H head dim, D model dim, R adapter dim.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from llm.ops import masks
from llm.typing import Array

SHARED = -1  # segment id of virtual tokens and prefix keys: visible to every segment
ADAPTER_SITES = ("attn", "mlp")  # sub-layers a bottleneck adapter can follow


@struct.dataclass
class Extras:
    """What the PEFT methods of a run add to the forward pass (None: not used)."""

    prompt_PD: Array | None = None  # prompt tuning: virtual token embeddings
    prefix_k_YPKH: Array | None = None  # prefix tuning: keys per layer (never rotated)
    prefix_v_YPKH: Array | None = None  # prefix tuning: values per layer
    adapters: dict[str, dict[str, Array]] | None = None  # site -> {down, down_b, up, up_b}

    @property
    def n_virtual(self) -> int:
        """How many positions the real tokens move on (P), 0 with neither prompt nor prefix."""
        if self.prompt_PD is not None and self.prefix_k_YPKH is not None:
            raise ValueError("one run uses prompt tuning or prefix tuning, not both")
        if self.prompt_PD is not None:
            return self.prompt_PD.shape[0]
        return 0 if self.prefix_k_YPKH is None else self.prefix_k_YPKH.shape[1]

    def layer_slices(self) -> Any:
        """The per-layer part (prefix, adapters) as a pytree with a leading layers axis."""
        return (self.prefix_k_YPKH, self.prefix_v_YPKH, self.adapters)


def combine(*extras: Extras) -> Extras:
    """The fields of several components' `Extras` in one; a field set twice is an error."""
    out: dict[str, Any] = {}
    for e in extras:
        for name in ("prompt_PD", "prefix_k_YPKH", "prefix_v_YPKH", "adapters"):
            value = getattr(e, name)
            if value is None:
                continue
            if name in out:
                raise ValueError(f"two adapter components both set {name}")
            out[name] = value
    return Extras(**out)


@struct.dataclass
class LayerExtras:
    """One layer's slice of `Extras`: what the block and its attention read."""

    prefix_k_PKH: Array | None = None
    prefix_v_PKH: Array | None = None
    adapters: dict[str, dict[str, Array]] | None = None
    shared: bool = struct.field(pytree_node=False, default=False)  # SHARED ids may occur

    @classmethod
    def of(cls, sliced: Any, shared: bool) -> LayerExtras:
        k, v, adapters = sliced if sliced is not None else (None, None, None)
        return cls(k, v, adapters, shared)


def bottleneck(h_BLD: Array, p: dict[str, Array]) -> Array:
    """h + up(relu(down(h))) (Houlsby et al. 2019; ReLU as in Pfeiffer et al. 2020,
    arXiv:2005.00247). With `up` and its bias zero it returns h exactly."""
    dtype = h_BLD.dtype
    z_BLR = jnp.einsum("BLD,DR->BLR", h_BLD, p["down"].astype(dtype)) + p["down_b"].astype(dtype)
    up_BLD = jnp.einsum("BLR,RD->BLD", jax.nn.relu(z_BLR), p["up"].astype(dtype))
    return h_BLD + (up_BLD + p["up_b"].astype(dtype))


def shared_mask(
    q_segment_ids_BL: Array,
    kv_segment_ids_BS: Array,
    q_positions_BL: Array,
    kv_positions_BS: Array,
    sliding_window: int | None,
) -> Array:
    """mask_BLS of causal attention where keys in segment `SHARED` are also visible to every
    non-padding query at a later or equal position (the sliding window never hides them)."""
    mask_BLS = masks.attention_mask(
        q_segment_ids_BL, kv_segment_ids_BS, q_positions_BL, kv_positions_BS,
        causal=True, sliding_window=sliding_window,
    )  # fmt: skip
    shared_BLS = (kv_segment_ids_BS == SHARED)[:, None, :] & (q_segment_ids_BL != 0)[:, :, None]
    shared_BLS &= kv_positions_BS[:, None, :] <= q_positions_BL[:, :, None]
    return mask_BLS | shared_BLS

"""The train state: everything a step reads and writes, as one pytree of arrays.

Everything that influences the next step lives here (not in Python variables), so a
checkpoint of this pytree plus the data iterator's position resumes a run bit for bit:
the step counter, the trained `params` and the `frozen` tree (llm/train/trainable.py: the
optimiser state covers `params` only), optimiser state, the base RNG key, the float16 loss scale,
the rolling statistics of the spike detector and, with truncated BPTT, the recurrent state
carried from batch to batch (`carry`).

Why `carry` is a field of its own (not a component of `frozen`): it is written by every step,
never read as weights, and laid out by batch row, not by a parameter's logical axes. It is a
dict of arrays named by their axes (`h_YBH`, `c_YBH`, `lengths_B`: the letter B marks the row
axis, which the step splits into micro-batches and the mesh shards like the batch), empty
without `train.tbptt`. An empty carry has no leaves and is left out of `to_dict`, so the state
of every other run, and every checkpoint written before the field existed, is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from llm.typing import Array, PyTree


@dataclasses.dataclass(frozen=True)
class TrainState:
    """step: int32 scalar, optimiser steps taken.  params / frozen: the trained and the read-only
    trees (dicts of components, see trainable.py).  rng: uint32[2] raw base key (dropout).
    loss_scale / good_steps: float16 dynamic loss scaling (Micikevicius et al. 2018); unused
    (scale 1) otherwise.  spike_hist_W2: the last W (loss, grad norm) pairs, oldest first;
    spike_seen: how many pairs were recorded; skipped: updates skipped as spikes."""

    step: Array
    params: PyTree
    frozen: PyTree
    opt_state: PyTree
    rng: Array
    loss_scale: Array
    good_steps: Array
    spike_hist_W2: Array
    spike_seen: Array
    skipped: Array
    carry: dict[str, Array] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what checkpoints store); an empty carry is left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not out["carry"]:
            del out["carry"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{"carry": {}, **data})


jax.tree_util.register_dataclass(
    TrainState, data_fields=[f.name for f in dataclasses.fields(TrainState)], meta_fields=[]
)


def init_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    loss_scale: float = 1.0,
    spike_window: int = 2,
    frozen: PyTree | None = None,
    carry: dict[str, Array] | None = None,
) -> TrainState:
    """A step-0 state around `params` (fresh or loaded): new optimiser state for them only;
    `carry`: the zero recurrent state of truncated BPTT (llm.train.build), else empty."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen={} if frozen is None else frozen,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
        loss_scale=jnp.asarray(loss_scale, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
        spike_hist_W2=jnp.zeros((spike_window, 2), jnp.float32),
        spike_seen=jnp.zeros((), jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
        carry={} if carry is None else carry,
    )


def dropout_key(state: TrainState, micro: Array | int) -> Array:
    """The dropout key of micro-batch `micro` of the current step: a pure function of both."""
    base = jax.random.wrap_key_data(state.rng, impl="threefry2x32")
    return jax.random.fold_in(jax.random.fold_in(base, state.step), micro)

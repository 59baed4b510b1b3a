"""The MoE layer's three paths against the dense MLP of equal active width: forward + backward.

    python bench/moe.py                              # E=8, top-2, d 128, expert width 256
    python bench/moe.py --experts 4 --tokens 4096

Times one jitted value-and-grad of sum(sin(layer(x))) over [B, L, D] inputs for: the dense
MLP of width k * F (the same active FLOPs per token: the ceiling a perfect router reaches),
dropless `dense` (every expert on every token: E/k times the active FLOPs), dropless `ragged`
(sort + `jax.lax.ragged_dot`) and capacity dispatch at factors 1.0 and 1.25 (GShard's
one-hot einsums). Prints milliseconds (median of --reps) and the ratio to the dense MLP.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.config import ModelConfig
from llm.model.mlp import MLP
from llm.model.moe import MoE


def _timed(layer: nnx.Module, x_BLD, reps: int) -> float:
    graphdef, state = nnx.split(layer)

    def loss(state, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x).hidden_BLD))

    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(state, x_BLD))  # compile
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(step(state, x_BLD))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--d_ff", type=int, default=256, help="width of each expert")
    parser.add_argument("--tokens", type=int, default=2048, help="B * L, with L = 256")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    base = ModelConfig(d_model=args.d_model, n_heads=4, d_ff=args.d_ff, activation="swiglu")
    moe = dataclasses.replace(base, n_experts=args.experts, experts_per_token=args.k)
    L = 256
    x_BLD = jax.random.normal(jax.random.key(0), (args.tokens // L, L, args.d_model))
    rows = {
        "dense MLP, width k*F (peer)": MLP(
            dataclasses.replace(base, d_ff=args.k * args.d_ff), out_std=0.02, rngs=nnx.Rngs(0)
        )
    }
    for name, over in [("dropless dense", {}), ("dropless ragged", {"moe_dropless": "ragged"}),
                       ("capacity 1.0", {"capacity_factor": 1.0}),
                       ("capacity 1.25", {"capacity_factor": 1.25})]:  # fmt: skip
        rows[f"MoE {name}"] = MoE(dataclasses.replace(moe, **over), out_std=0.02, rngs=nnx.Rngs(0))
    print(f"{jax.devices()[0].platform}: E={args.experts} k={args.k} D={args.d_model} "
          f"F={args.d_ff} tokens={args.tokens}, fwd+bwd ms (median of {args.reps})")  # fmt: skip
    print(f"| {'layer':<30} | {'ms':>8} | {'x peer':>6} |\n|---|---:|---:|")
    peer = None
    for name, layer in rows.items():
        ms = _timed(layer, x_BLD, args.reps)
        peer = peer or ms
        print(f"| {name:<30} | {ms:8.2f} | {ms / peer:6.2f} |")


if __name__ == "__main__":
    main()

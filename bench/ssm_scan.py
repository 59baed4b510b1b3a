"""Mamba's selective scan, parallel against sequential, and a Transformer of the same width as
the peer: time and memory of one training step's forward and backward.

    python bench/ssm_scan.py                           # B=8, D=128, 2 layers, L = 64 256 1024
    python bench/ssm_scan.py --lengths 128 512 --reps 5

For each length L and model (`ssm_scan: parallel`, i.e. `lax.associative_scan` over time;
`ssm_scan: sequential`, the `lax.scan` reference; a pre-norm Transformer with d_ff = 4D,
RoPE and the default attention backend), prints the median wall time of a jitted
value-and-grad of the next-token loss (the first call, which compiles, excluded), tokens per
second, and XLA's compiled temporary memory (`memory_analysis().temp_size_in_bytes`: the
activations and scan buffers the step holds beside params and inputs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.model import forward, init_params


def _configs(args) -> dict[str, ModelConfig]:
    common = dict(vocab_size=259, d_model=args.d_model, n_layers=args.layers, norm="rmsnorm",
                  max_seq_len=max(args.lengths))  # fmt: skip
    mamba = dict(arch="mamba", ssm_state=args.state, **common)
    return {
        "mamba parallel": ModelConfig(**mamba, ssm_scan="parallel"),
        "mamba sequential": ModelConfig(**mamba, ssm_scan="sequential"),
        "transformer": ModelConfig(**common, n_heads=4, d_ff=4 * args.d_model,
                                   pos_encoding="rope"),
    }  # fmt: skip


def _step(cfg: ModelConfig):
    def loss(params, tokens):
        logits = forward(cfg, params, tokens[:, :-1]).logits_BLV
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    return jax.jit(jax.value_and_grad(loss))


def _measure(cfg: ModelConfig, B: int, L: int, reps: int) -> tuple[float, int]:
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (B, L + 1)), jnp.int32)
    step = _step(cfg)
    memory = step.lower(params, tokens).compile().memory_analysis()
    jax.block_until_ready(step(params, tokens))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(step(params, tokens))
        times.append(time.perf_counter() - start)
    return statistics.median(times), memory.temp_size_in_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    print(f"B={args.batch} D={args.d_model} layers={args.layers} N={args.state} "
          f"backend={jax.default_backend()}")  # fmt: skip
    header = ("L", "model", "step ms", "tokens/s", "temp MiB", "vs parallel")
    print("{:>6}  {:<18} {:>9} {:>10} {:>9} {:>11}".format(*header))
    for L in args.lengths:
        base = None
        for name, cfg in _configs(args).items():
            seconds, temp = _measure(cfg, args.batch, L, args.reps)
            base = base or seconds
            print(f"{L:>6}  {name:<18} {seconds * 1e3:>9.1f} {args.batch * L / seconds:>10,.0f} "
                  f"{temp / 2**20:>9.1f} {seconds / base:>10.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

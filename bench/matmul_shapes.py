"""The train step's matmul shapes on this CPU: XLA (jit) against PyTorch, GFLOP/s each.

    python bench/matmul_shapes.py [--d_model 256 --seq_len 256 --batch 8 --heads 4]

`bench/train_step.py` reports the whole step; this shows what bounds it. Rows are the
2-D projections of a GPT block (tokens x d_model x d_ff and the weight gradients, which
contract the token axis) and the batched products of attention over batch x heads (one
64-row query block against its keys, as `xla_flash` runs them). Each op is timed alone,
best of `--repeats` (the machine's noise is +-15%), float32, all cores.
Needs torch (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def shapes(a: argparse.Namespace) -> list[tuple[str, int, tuple[int, int, int], str]]:
    """(what, batch, (m, k, n), form): form NN is [m,k]x[k,n]; TN contracts both row axes."""
    T, D, F, H = a.batch * a.seq_len, a.d_model, 4 * a.d_model, a.d_model // a.heads
    BN, S, blk = a.batch * a.heads, a.seq_len, 64
    return [
        ("projection x W (q/k/v/o)", 1, (T, D, D), "NN"),
        ("MLP up x W", 1, (T, D, F), "NN"),
        ("MLP down x W", 1, (T, F, D), "NN"),
        ("weight gradient x' dy (MLP up)", 1, (D, T, F), "TN"),
        ("attention q k' (last block)", BN, (blk, H, S), "NN"),
        ("attention p v (last block)", BN, (blk, S, H), "NN"),
        ("attention q k' (whole square)", BN, (S, H, S), "NN"),
    ]


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    import torch

    rng = np.random.default_rng(0)
    print(f"devices: {jax.devices()}; torch threads: {torch.get_num_threads()}")
    print("| op | batch x (m, k, n) | XLA GFLOP/s | PyTorch GFLOP/s | XLA / PyTorch |")
    print("|---|---|---:|---:|---:|")
    for what, nb, (m, k, n), form in shapes(a):
        lhs_shape = (nb, k, m) if form == "TN" else (nb, m, k)
        lhs = rng.standard_normal(lhs_shape, dtype=np.float32)
        rhs = rng.standard_normal((nb, k, n), dtype=np.float32)
        spec = "bkm,bkn->bmn" if form == "TN" else "bmk,bkn->bmn"
        if nb == 1:  # a plain 2-D matmul, as Linear runs it
            lhs, rhs, spec = lhs[0], rhs[0], spec.replace("b", "")
        f = jax.jit(lambda x, y, spec=spec: jnp.einsum(spec, x, y))
        x, y = jnp.asarray(lhs), jnp.asarray(rhs)
        tx, ty = torch.from_numpy(lhs), torch.from_numpy(rhs)
        flops = 2 * nb * m * k * n
        ours = flops / best(lambda f=f, x=x, y=y: f(x, y).block_until_ready(), a.repeats)
        peer = flops / best(lambda tx=tx, ty=ty, s=spec: torch.einsum(s, tx, ty), a.repeats)
        print(
            f"| {what} | {nb} x ({m}, {k}, {n}) | {ours / 1e9:.1f} | {peer / 1e9:.1f} "
            f"| {ours / peer:.2f} |"
        )


if __name__ == "__main__":
    main()

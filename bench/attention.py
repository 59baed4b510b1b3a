"""Attention kernels benchmark: our Pallas flash attention vs cuDNN, XLA and JAX's Pallas ops.

    python bench/attention.py                          # defaults per backend (tiny on CPU)
    python bench/attention.py --seq-lens 1024,4096,8192 --head-dims 64,128 --dtype bfloat16

For each (sequence length, head dim) it times the forward pass and the backward pass alone
(the VJP of saved residuals) of every implementation available on this backend and prints
TFLOP/s with the FlashAttention convention: forward = 4 * B * S^2 * d * H (halved when
causal), backward = 2.5 x forward. The "vs peer" column is the ratio to the peer of the same
run: cuDNN (`jax.nn.dot_product_attention(implementation="cudnn")`) on GPU, the XLA reference
elsewhere. On GPU it also prints peak device memory per call (should grow linearly in S).

Implementations: `ours` (llm/kernels: Triton on GPU, Mosaic on TPU, interpreted on CPU),
`xla` (our jnp reference), `jax-nn-xla`, `cudnn` (GPU), `jax-pallas` (the kernels shipped in
jax.experimental.pallas.ops, K/V repeated for them since they lack GQA) and `tokamax` (GPU/TPU,
when `pip install tokamax` succeeded). On CPU the Pallas interpreter only proves the path
works: its timings say nothing about accelerators.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp

from llm.ops.attention import attention


def flops(batch: int, seq: int, head_dim: int, heads: int, causal: bool) -> tuple[float, float]:
    fwd = 4.0 * batch * seq * seq * head_dim * heads * (0.5 if causal else 1.0)
    return fwd, 2.5 * fwd


def implementations(backend: str, causal: bool) -> dict:
    """name -> f(q_BLNH, k_BSKH, v_BSKH) -> out_BLNH, for what this backend can run."""
    impls = {
        "xla": functools.partial(attention, causal=causal, impl="xla"),
        "jax-nn-xla": functools.partial(_jax_nn, causal=causal, implementation="xla"),
        "ours": functools.partial(attention, causal=causal, impl="pallas"),
    }
    if backend == "gpu":
        impls["cudnn"] = functools.partial(_jax_nn, causal=causal, implementation="cudnn")
        impls["jax-pallas"] = functools.partial(_jax_pallas_gpu, causal=causal)
    if backend == "tpu":
        impls["jax-pallas"] = functools.partial(_jax_pallas_tpu, causal=causal)
    if backend in ("gpu", "tpu"):
        try:
            import tokamax

            impls["tokamax"] = functools.partial(_tokamax, tokamax, causal=causal)
        except ImportError:
            print("tokamax: not installed (pip install tokamax) - skipped")
    return impls


def _jax_nn(q, k, v, *, causal, implementation):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)


def _repeat_kv(q, k, v):
    G = q.shape[2] // k.shape[2]
    return jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)


def _jax_pallas_gpu(q, k, v, *, causal):
    from jax.experimental.pallas.ops.gpu import attention as ops

    k, v = _repeat_kv(q, k, v)
    return ops.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=causal)


def _jax_pallas_tpu(q, k, v, *, causal):
    from jax.experimental.pallas.ops.tpu import flash_attention as ops

    k, v = _repeat_kv(q, k, v)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    out = ops.flash_attention(q, k, v, causal=causal, sm_scale=q.shape[-1] ** -0.5)
    return jnp.swapaxes(out, 1, 2)


def _tokamax(tokamax, q, k, v, *, causal):
    return tokamax.dot_product_attention(q, k, v, is_causal=causal)


def timed(fn, *args, iters: int) -> float:
    """Median seconds per call after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(fn, q, k, v, iters: int) -> tuple[float, float, int | None]:
    """(forward s, backward s, peak bytes) of one implementation."""
    fwd = jax.jit(fn)
    t_fwd = timed(fwd, q, k, v, iters=iters)
    out, vjp = jax.vjp(fn, q, k, v)
    bwd = jax.jit(lambda vjp, cot: vjp(cot))
    t_bwd = timed(bwd, vjp, jnp.ones_like(out), iters=iters)
    return t_fwd, t_bwd, peak_bytes()


def run(args) -> list[dict]:
    backend = jax.default_backend()
    impls = implementations(backend, args.causal)
    if args.impls:
        impls = {name: f for name, f in impls.items() if name in args.impls.split(",")}
    peer = "cudnn" if "cudnn" in impls else "xla"
    dtype = jnp.dtype(args.dtype)
    rows = []
    for seq in (int(s) for s in args.seq_lens.split(",")):
        for head_dim in (int(h) for h in args.head_dims.split(",")):
            shape_q = (args.batch, seq, args.heads, head_dim)
            shape_kv = (args.batch, seq, args.kv_heads, head_dim)
            ks = jax.random.split(jax.random.key(0), 3)
            q = jax.random.normal(ks[0], shape_q, dtype)
            k, v = (jax.random.normal(key, shape_kv, dtype) for key in ks[1:])
            f_fwd, f_bwd = flops(args.batch, seq, head_dim, args.heads, args.causal)
            results = {}
            for name, fn in impls.items():
                try:
                    results[name] = measure(fn, q, k, v, args.iters)
                except Exception as e:  # a peer failing (unsupported shape) must not stop the table
                    print(f"{name} S={seq} d={head_dim}: failed: {type(e).__name__}: {e}"[:300])
            for name, (t_fwd, t_bwd, peak) in results.items():
                ref = results.get(peer)
                rows.append(
                    dict(
                        impl=name,
                        seq=seq,
                        head_dim=head_dim,
                        fwd_tflops=f_fwd / t_fwd / 1e12,
                        bwd_tflops=f_bwd / t_bwd / 1e12,
                        fwd_ratio=ref[0] / t_fwd if ref else None,
                        bwd_ratio=ref[1] / t_bwd if ref else None,
                        peak=peak,
                    )
                )
    print_table(rows, peer)
    return rows


def print_table(rows: list[dict], peer: str) -> None:
    print(
        f"\n| impl | S | d | fwd TFLOP/s | bwd TFLOP/s | fwd vs {peer} | bwd vs {peer} | peak MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        peak = "-" if r["peak"] is None else f"{r['peak'] / 2**20:.0f}"
        print(
            f"| {r['impl']} | {r['seq']} | {r['head_dim']} | {r['fwd_tflops']:.4f} | "
            f"{r['bwd_tflops']:.4f} | {ratio(r['fwd_ratio'])} | {ratio(r['bwd_ratio'])} | {peak} |"
        )


def main() -> None:
    on_cpu = jax.default_backend() == "cpu"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq-lens", default="128,256" if on_cpu else "1024,2048,4096,8192")
    p.add_argument("--head-dims", default="64" if on_cpu else "64,128,256")
    p.add_argument("--batch", type=int, default=1 if on_cpu else 4)
    p.add_argument("--heads", type=int, default=4 if on_cpu else 16)
    p.add_argument("--kv-heads", type=int, default=2 if on_cpu else 8)
    p.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--iters", type=int, default=3 if on_cpu else 20)
    p.add_argument("--impls", default="", help="comma-separated subset of implementations")
    args = p.parse_args()
    print(f"backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, {args}")
    run(args)


if __name__ == "__main__":
    main()

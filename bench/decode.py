"""Decode throughput: KV-cache steps vs recomputing the prefix, against the bandwidth bound.

    python bench/decode.py                       # defaults: ~41M-param model, batch 1 and 8
    python bench/decode.py --batches 1 4 16 --steps 64 --d-model 256 --layers 4

A decode step must read every weight and the valid part of the cache once, so
    bound (tokens/s) = batch * bandwidth / (weight bytes + cache bytes read per step),
with the bandwidth measured in the same run (a jitted sum over a large array: read-only
traffic, like decoding). "recompute" runs a full forward over a fixed window per token (the
no-cache sampler in llm/train/sample.py). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import ModelConfig
from llm.inference import Engine
from llm.model import forward, init_params
from llm.model.kv_cache import cache_bytes


def measure_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of `repeats` jitted sums over `n_bytes` of float32."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(_timed(lambda: total(x).block_until_ready()) for _ in range(repeats))
    return n_bytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cached_tokens_per_s(engine: Engine, batch: int, prompt_len: int, steps: int) -> float:
    prompts = [list(range(1, prompt_len + 1))] * batch
    state = engine.prefill(prompts, [engine_greedy()] * batch)
    active = np.ones(state.tokens_B.shape[0], bool)
    state = engine.step(state, active)  # compile
    state.tokens_B.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state = engine.step(state, active)
    state.tokens_B.block_until_ready()
    return batch * steps / (time.perf_counter() - start)


def engine_greedy():
    from llm.inference import GREEDY

    return GREEDY


def recompute_tokens_per_s(cfg, params, batch: int, window: int, steps: int) -> float:
    fwd = jax.jit(lambda p, t: jnp.argmax(forward(cfg, p, t).logits_BLV[:, -1], -1))
    tokens = jnp.ones((batch, window), jnp.int32)
    fwd(params, tokens).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        out = fwd(params, tokens)
    out.block_until_ready()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per batch size")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=256, help="cache slots per sequence")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                      n_heads=8, n_kv_heads=8, d_ff=4 * args.d_model, max_seq_len=args.max_len,
                      pos_encoding="rope", norm="rmsnorm", activation="swiglu")  # fmt: skip
    params = init_params(cfg, jax.random.key(0))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    engine = Engine(cfg, params, max_len=args.max_len)
    bandwidth = measure_bandwidth()
    print(f"device {jax.devices()[0].device_kind}, weights {weight_bytes / 1e6:.1f} MB, "
          f"measured read bandwidth {bandwidth / 1e9:.2f} GB/s")  # fmt: skip
    print(f"{'batch':>5} {'kv tok/s':>10} {'recompute tok/s':>16} {'speedup':>8} "
          f"{'bound tok/s':>12} {'of bound':>9}")  # fmt: skip
    for batch in args.batches:
        mid_len = args.prompt_len + args.steps // 2
        read = weight_bytes + cache_bytes(cfg, batch, mid_len)
        bound = batch * bandwidth / read
        kv = cached_tokens_per_s(engine, batch, args.prompt_len, args.steps)
        rec = recompute_tokens_per_s(cfg, params, batch, args.prompt_len, max(args.steps // 4, 2))
        print(f"{batch:>5} {kv:>10.1f} {rec:>16.1f} {kv / rec:>8.1f} {bound:>12.1f} "
              f"{kv / bound:>9.0%}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Quantized decode speed: tokens/s of int8 / int4 weights vs float32, against the bytes bound.

    PYTHONPATH=. python bench/quant_decode.py                       # SmolLM2, batch 1 4 16
    PYTHONPATH=. python bench/quant_decode.py --batches 1 --steps 16 --variants float32 int8

The model is the float32 SmolLM2-135M of `llm convert from-gguf` (default /tmp/runner_smollm2)
and its round-to-nearest quantizations by `llm.model.quantized.quantize_params`: the block
Linears as int8 per output channel (group 0) or int4 in groups of 64 (128 does not divide
SmolLM2's d_model 576); `+emb` also quantizes
the tied token table (int8, one scale per row), which the logits read too. Every variant
decodes greedily with `Engine.step` (prefill excluded), `--steps` tokens after a
`--prompt-len` prompt; the best of `--repeats` runs is kept, the variants taking turns within
each repeat (other jobs share this CPU, and load comes in bursts).

Batch-B decode is memory-bound: each step reads every weight and the valid cache once, so
    bound (tokens/s) = B * bandwidth / (weight bytes + cache bytes read per step),
with the read bandwidth measured in the same run (the best of jitted sums over 512 MB of
float32: read-only traffic, as decoding is). "of bound" is how close a variant gets to it.
`--kv-cache int8` runs every variant with the int8 KV cache (llm/model/kv_cache.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

# Keep bench/ itself off the import path so no script here can shadow a package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llm.checkpoint import load_model  # noqa: E402
from llm.inference import GREEDY, Engine  # noqa: E402
from llm.model.kv_cache import cache_bytes  # noqa: E402
from llm.model.quantized import BLOCK_LINEARS, param_bytes, quantize_params  # noqa: E402

# name -> quantize_params keywords (None: the float32 model itself)
VARIANTS = {
    "float32": None,
    "int8": dict(fmt="int8", bits=8, group=0),
    "int4-g64": dict(fmt="int4", bits=4, group=64),
    "int8+emb": dict(fmt="int8", bits=8, group=0, targets=f"{BLOCK_LINEARS}|^token_embed$"),
}


def measure_bandwidth(n_bytes: int = 1 << 29, repeats: int = 7) -> float:
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


def decode_seconds(engine: Engine, batch: int, prompt_len: int, steps: int) -> float:
    """Seconds for `steps` decode steps of `batch` rows (compiled, prefill excluded)."""
    prompts = [list(range(3, prompt_len + 3))] * batch
    state = engine.prefill(prompts, [GREEDY] * batch)
    active = np.ones(state.tokens_B.shape[0], bool)
    state = engine.step(state, active)  # compile
    state.tokens_B.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state = engine.step(state, active)
    state.tokens_B.block_until_ready()
    return time.perf_counter() - start


def variant_params(cfg, params, name: str):
    spec = VARIANTS[name]
    return params if spec is None else quantize_params(cfg, params, **spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/runner_smollm2", help="float32 model directory")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--steps", type=int, default=16, help="decode steps timed per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell; the best is kept")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128, help="cache slots per sequence")
    ap.add_argument("--kv-cache", choices=("auto", "int8"), default="auto")
    a = ap.parse_args()
    loaded = load_model(a.model)
    cfg = dataclasses.replace(loaded.config.model, kv_cache_dtype=a.kv_cache)
    bandwidth = measure_bandwidth()
    print(f"{a.model}: device {jax.devices()[0].device_kind}, {jax.device_count()} device(s), "
          f"measured read bandwidth {bandwidth / 1e9:.2f} GB/s, kv cache {a.kv_cache}, "
          f"prompt {a.prompt_len}, {a.steps} steps x best of {a.repeats}")  # fmt: skip
    engines = {}
    for name in a.variants:
        params = variant_params(cfg, loaded.params, name)
        engines[name] = (Engine(cfg, params, max_len=a.max_len), param_bytes(params))
    print("| weights | weight MB | batch | tok/s | vs float32 | bound tok/s | of bound |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for batch in a.batches:
        best = {name: float("inf") for name in engines}
        for _ in range(a.repeats):  # interleaved, so a burst of load hits every variant alike
            for name, (engine, _) in engines.items():
                seconds = decode_seconds(engine, batch, a.prompt_len, a.steps)
                best[name] = min(best[name], seconds)
        for name, (_, weight_bytes) in engines.items():
            tps = batch * a.steps / best[name]
            base = batch * a.steps / best["float32"] if "float32" in best else float("nan")
            read = weight_bytes + cache_bytes(cfg, batch, a.prompt_len + a.steps // 2)
            bound = batch * bandwidth / read
            row = (name, f"{weight_bytes / 1e6:.1f}", batch, f"{tps:.1f}", f"{tps / base:.2f}x",
                   f"{bound:.1f}", f"{tps / bound:.0%}")  # fmt: skip
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()

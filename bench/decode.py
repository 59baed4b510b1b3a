"""Decode throughput: KV cache vs recomputing the prefix vs `transformers`, against the bound.

    python bench/decode.py                       # defaults: ~50M-param Llama, batch 1, 4, 16
    python bench/decode.py --batches 1 8 --steps 64 --d-model 256 --layers 4 --no-hf

The model is a random Hugging Face `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, tied
embeddings), saved with `save_pretrained` and imported with our converter, so both sides
decode with the same weights (random weights: speed does not depend on them).

A decode step must read every weight and the valid part of the cache once, so
    bound (tokens/s) = batch * bandwidth / (weight bytes + cache bytes read per step),
with the bandwidth measured in the same run (a jitted sum over a large array: read-only
traffic, like decoding). Columns, all greedy, `--steps` new tokens after a `--prompt-len`
prompt:
  * ours: `Engine.step` (jitted decode step over the preallocated cache), prefill excluded;
  * recompute: a full forward over the prompt window per token (no cache);
  * transformers: `model.generate(do_sample=False)` with its default dynamic cache, torch
    CPU; decode time = generate(steps + 1 tokens) - generate(1 token), i.e. prefill excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Keep bench/ itself off the import path so no script here can shadow a package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llm.inference import GREEDY, Engine  # noqa: E402
from llm.model import forward  # noqa: E402
from llm.model.kv_cache import cache_bytes  # noqa: E402


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


def hf_llama(a: argparse.Namespace, out_dir: Path):
    """A random-init Llama saved to `out_dir`; returns the torch model (eval mode)."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.d_model, intermediate_size=4 * a.d_model,
        num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=a.max_len, tie_word_embeddings=True, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = T.LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir)
    return model


def import_ours(hf_dir: Path):
    from llm.interop.hf_config import model_config_from_hf
    from llm.interop.hf_weights import load_hf_params

    cfg = model_config_from_hf(json.loads((hf_dir / "config.json").read_text()), source="bench")
    params, _ = load_hf_params(cfg, hf_dir)
    return cfg, jax.tree.map(jnp.asarray, params)


def ours_tokens_per_s(engine: Engine, batch: int, prompt_len: int, steps: int) -> float:
    prompts = [list(range(3, prompt_len + 3))] * batch
    state = engine.prefill(prompts, [GREEDY] * batch)
    active = np.ones(state.tokens_B.shape[0], bool)
    state = engine.step(state, active)  # compile
    state.tokens_B.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state = engine.step(state, active)
    state.tokens_B.block_until_ready()
    return batch * steps / (time.perf_counter() - start)


def recompute_tokens_per_s(cfg, params, batch: int, window: int, steps: int) -> float:
    fwd = jax.jit(lambda p, t: jnp.argmax(forward(cfg, p, t).logits_BLV[:, -1], -1))
    tokens = jnp.ones((batch, window), jnp.int32)
    fwd(params, tokens).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        out = fwd(params, tokens)
    out.block_until_ready()
    return batch * steps / (time.perf_counter() - start)


def hf_tokens_per_s(model, batch: int, prompt_len: int, steps: int) -> float:
    import torch

    ids = torch.arange(3, prompt_len + 3).repeat(batch, 1)
    common = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def generate(n: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **common)
            elapsed = time.perf_counter() - start
        assert out.shape[1] == prompt_len + n, out.shape
        return elapsed

    generate(2)  # warm up
    decode = min(generate(steps + 1) for _ in range(2)) - min(generate(1) for _ in range(3))
    return batch * steps / decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per batch size")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=256, help="cache slots per sequence")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers column")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = hf_llama(a, Path(tmp))
        cfg, params = import_ours(Path(tmp))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    engine = Engine(cfg, params, max_len=a.max_len)
    bandwidth = measure_bandwidth()
    print(f"device {jax.devices()[0].device_kind}, weights {weight_bytes / 1e6:.1f} MB, "
          f"measured read bandwidth {bandwidth / 1e9:.2f} GB/s")  # fmt: skip
    print("| batch | ours tok/s | recompute tok/s | transformers tok/s | ours / transformers "
          "| bound tok/s | ours of bound |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in a.batches:
        read = weight_bytes + cache_bytes(cfg, batch, a.prompt_len + a.steps // 2)
        bound = batch * bandwidth / read
        ours = ours_tokens_per_s(engine, batch, a.prompt_len, a.steps)
        rec = recompute_tokens_per_s(cfg, params, batch, a.prompt_len, max(a.steps // 4, 2))
        hf = float("nan") if a.no_hf else hf_tokens_per_s(hf_model, batch, a.prompt_len, a.steps)
        print(f"| {batch} | {ours:.1f} | {rec:.1f} | {hf:.1f} | {ours / hf:.2f}x | {bound:.1f} "
              f"| {ours / bound:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()

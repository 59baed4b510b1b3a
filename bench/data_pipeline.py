"""Throughput of the data pipeline next to what a training step consumes.

    python bench/data_pipeline.py [--config FILE] [key=value ...] [--batches 2000] [--record]

Measures, on the configured corpus (default: Shakespeare, prepared on first use):
  1. tokenize: cleaned documents -> token shard on disk (grain, data.read_threads threads)
  2. pack + shuffle + batch from the pre-tokenized memmap shards (what training reads)
  3. tokenize + pack + batch, cold: 1 and 2 for one epoch of the train split
  4. a jitted forward + backward of the configured model on one batch (the consumer)
and prints tokens/s for each and the ratio of pipeline speed to step consumption. With
--record, appends the table and the command to docs/benchmarks.md.

    python bench/data_pipeline.py --long-doc-mb 4 200 [--record]

measures instead the peak memory (RSS) of near-dedup and tokenization on one single-line
document of each size, streamed (what the pipeline does) against whole (the one-shot
computation it replaced), each in a fresh process capped at --memory-cap-gb of address space.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm.cli_args import add_config_args, config_from_args
from llm.commands.data import load_tokenizer_for
from llm.data import load_shards, make_batches
from llm.data.corpus import prepare_documents, split_documents
from llm.data.tokenized import tokenize_documents


def bench_tokenize(cfg, tokenizer) -> tuple[int, float]:
    docs, _ = prepare_documents(cfg.data, cfg.data.corpus)
    train = split_documents(docs, cfg.data.val_fraction, cfg.data.seed)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shard = tokenize_documents([d.text for d in train], tokenizer, cfg.data, Path(tmp))
        return shard.num_tokens, time.perf_counter() - start


def bench_batches(cfg, tokenizer, n: int) -> tuple[int, float]:
    it = make_batches(cfg, "train", tokenizer)
    next(it)  # start grain's threads outside the timing
    start = time.perf_counter()
    tokens = sum(int(next(it)["inputs"].size) for _ in range(n))
    return tokens, time.perf_counter() - start


def bench_step(cfg, batch) -> tuple[int, float] | str:
    """Seconds per jitted forward + backward on one batch, or why it could not run."""
    try:
        import jax
        import jax.numpy as jnp

        from llm.model import forward, init_params
    except ImportError as err:
        return f"model unavailable ({err})"
    params = init_params(cfg.model, jax.random.key(0))
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(p):
        out = forward(
            cfg.model,
            p,
            arrays["inputs"],
            positions_BL=arrays["positions"],
            segment_ids_BL=arrays["segment_ids"],
        )
        logp = jax.nn.log_softmax(out.logits_BLV.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, arrays["targets"][..., None], axis=-1)[..., 0]
        return (nll * arrays["loss_mask"]).sum() / arrays["loss_mask"].sum()

    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(params))
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(step(params))
    return batch["inputs"].size, (time.perf_counter() - start) / reps


def long_line(mb: float, seed: int = 0) -> str:
    """One line of about `mb` MB: random words of a 5,000-word vocabulary, built in 1 MB
    blocks so that building it does not itself need many times its size."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    blocks = []
    for _ in range(int(np.ceil(mb))):
        words = vocab[rng.integers(0, len(vocab), size=int(1e6 * min(mb, 1) / 5.9))]
        blocks.append(" ".join(words.tolist()) + " ")
        mb -= 1
    return "".join(blocks)


def _proc_status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _stage(cfg, tokenizer, stage: str, mode: str):
    """The computation measured: streamed is the pipeline's code, whole the one-shot one."""
    from llm.data.dedup import _hash64, _mix64, near_duplicates, shingles
    from llm.data.shards import write_shard

    d = cfg.data
    if stage == "dedup" and mode == "streamed":
        return lambda doc: near_duplicates([doc], d.near_dup_threshold or 0.8, d.minhash_perms,
                                           d.minhash_bands, d.shingle_words)  # fmt: skip
    if stage == "dedup":
        salts = np.random.default_rng(0).integers(0, 2**63, size=d.minhash_perms, dtype=np.uint64)
        hashes = lambda doc: _hash64(shingles(doc, d.shingle_words))  # noqa: E731
        return lambda doc: _mix64(salts[:, None] ^ hashes(doc)[None, :]).min(axis=1)
    tmp = tempfile.mkdtemp()
    if mode == "streamed":
        return lambda doc: tokenize_documents([doc], tokenizer, d, Path(tmp))
    whole = lambda t: [[tokenizer.bos_id, *tokenizer.encode(t), tokenizer.eos_id]]  # noqa: E731
    return lambda doc: write_shard(tmp, [doc], whole, tokenizer.vocab_size, d.read_threads)


def measure_long_doc(cfg, tokenizer, stage: str, mode: str, mb: str, cap_gb: float) -> dict:
    """In this (fresh) process: build the document, reset the peak, run the stage."""
    import gc
    import resource

    cap = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    run = _stage(cfg, tokenizer, stage, mode)
    doc = long_line(float(mb))
    gc.collect()
    floor = _proc_status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    start = time.perf_counter()
    try:
        run(doc)
    except MemoryError:
        return {"mb": len(doc) / 1e6, "floor": floor, "error": f"over the {cap_gb:g} GB cap"}
    return {"mb": len(doc) / 1e6, "floor": floor, "peak": _proc_status_mb("VmHWM"),
            "seconds": time.perf_counter() - start}  # fmt: skip


def long_doc_table(sizes: list[float], cap_gb: float, config_args: list[str], cfg):
    """One fresh process per (stage, mode, size); the table of peaks and of the excess over
    the document's own footprint (the process after building it)."""
    table = ["| stage | document | peak RSS | peak - RSS with the document | seconds |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for stage in ("dedup", "tokenize"):
        for mode in ("whole", "streamed"):
            for mb in sizes:
                child = [sys.executable, __file__, "--child", stage, mode, str(mb),
                         "--memory-cap-gb", str(cap_gb), *config_args]  # fmt: skip
                out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                cells = ([f"{r['peak']:,.0f} MB", f"{r['peak'] - r['floor']:,.0f} MB",
                          f"{r['seconds']:.1f}"] if "error" not in r
                         else [r["error"], "-", "-"])  # fmt: skip
                table.append(f"| {stage}, {mode} | {r['mb']:,.0f} MB | " + " | ".join(cells) + " |")
    d = cfg.data
    notes = [f"single line of random words; near dedup with {d.minhash_perms} permutations of "
             f"{d.shingle_words}-word shingles; tokenizer {d.tokenizer}; address space capped "
             f"at {cap_gb:g} GB per measurement; RSS in MiB from /proc/self/status (VmRSS with "
             "the document built, VmHWM after the stage)"]  # fmt: skip
    return table, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--batches", type=int, default=2000, help="batches read for row 2")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--long-doc-mb", type=float, nargs="+", help="peak-memory rows instead")
    parser.add_argument("--memory-cap-gb", type=float, default=6.0, help="per measurement")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # stage mode megabytes
    args = parser.parse_args()
    cfg = config_from_args(args)
    tokenizer = load_tokenizer_for(cfg.data.tokenizer)
    if args.child:
        print(json.dumps(measure_long_doc(cfg, tokenizer, *args.child, args.memory_cap_gb)))
        return 0
    if args.long_doc_mb:
        config_args = (["--config", args.config] if args.config else []) + args.overrides
        table, notes = long_doc_table(args.long_doc_mb, args.memory_cap_gb, config_args, cfg)
        print("\n".join([*table, "", *notes]))
        if args.record:
            record(" ".join(sys.argv), table, notes, "Peak memory on one huge single-line document")
        return 0
    load_shards(cfg.data, tokenizer)  # prepare (download, clean, cache) outside the timings

    tok_n, tok_s = bench_tokenize(cfg, tokenizer)
    batch_n, batch_s = bench_batches(cfg, tokenizer, args.batches)
    epoch_s = tok_s + tok_n / (batch_n / batch_s)
    step = bench_step(cfg, next(make_batches(cfg, "train", tokenizer)))
    rows = [
        (f"tokenize (grain, {cfg.data.read_threads} threads)", tok_n, tok_s),
        ("pack+shuffle+batch from memmap shards", batch_n, batch_s),
        ("tokenize+pack+batch, one cold epoch", tok_n, epoch_s),
    ]
    if isinstance(step, tuple):
        rows.append(("consumer: jitted fwd+bwd of the model", *step))
    table = ["| stage | tokens | seconds | tokens/s |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {n:,} | {s:.3f} | {n / s:,.0f} |" for name, n, s in rows]
    B, L = cfg.train.batch_size, cfg.train.seq_len
    notes = [f"batch {B} x {L}, tokenizer {cfg.data.tokenizer}, corpus {cfg.data.corpus}"]
    if isinstance(step, tuple):
        ratio = (batch_n / batch_s) / (step[0] / step[1])
        notes.append(f"shard reading is {ratio:,.0f}x faster than the step consumes tokens")
    else:
        notes.append(step)
    print("\n".join([*table, "", *notes]))
    if args.record:
        record(" ".join(sys.argv), table, notes)
    return 0


def record(command: str, table: list[str], notes: list[str],
           title: str = "Data pipeline throughput") -> None:  # fmt: skip
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    if not path.exists():
        path.write_text("# Benchmarks\n\nFigures recorded by the scripts in `bench/`.\n")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"\n## {title} ({when})\n",
        f"    python {command}\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}.\n",
        *table,
        "",
        *notes,
        "",
    ]
    with path.open("a") as f:
        f.write("\n".join(section))


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    sys.exit(main())

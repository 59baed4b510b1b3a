"""Throughput of the data pipeline next to what a training step consumes.

    python bench/data_pipeline.py [--config FILE] [key=value ...] [--batches 2000] [--record]

Measures, on the configured corpus (default: Shakespeare, prepared on first use):
  1. tokenize: cleaned documents -> token shard on disk (grain, data.read_threads threads)
  2. pack + shuffle + batch from the pre-tokenized memmap shards (what training reads)
  3. tokenize + pack + batch, cold: 1 and 2 for one epoch of the train split
  4. a jitted forward + backward of the configured model on one batch (the consumer)
and prints tokens/s for each and the ratio of pipeline speed to step consumption. With
--record, appends the table and the command to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--batches", type=int, default=2000, help="batches read for row 2")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    cfg = config_from_args(args)
    tokenizer = load_tokenizer_for(cfg.data.tokenizer)
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


def record(command: str, table: list[str], notes: list[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    if not path.exists():
        path.write_text("# Benchmarks\n\nFigures recorded by the scripts in `bench/`.\n")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"\n## Data pipeline throughput ({when})\n",
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

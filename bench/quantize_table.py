"""The quantization table of issue 19: held-out perplexity vs bits vs weight bytes.

    python bench/quantize_table.py --model /tmp/runner_smollm2 --group 64 --out /tmp/ptq_rows.jsonl
    python bench/quantize_table.py --rows float32,rtn-int8,gptq-int4   # a subset

Every row quantizes the float model with `llm.compress.ptq.quantize_model` (layer by layer on
calibration windows of Shakespeare's *training* split) and scores it with the `ppl` task of
`llm eval` / eval.py (`llm.eval.runner.run_ppl_run`: token perplexity and bits per byte of the
packed validation split of the model's corpus, Shakespeare, and of its ood corpus, Milton;
`--eval-batches` batches of each). Weight bytes are every param stored (codes, scales, offsets
and the float leaves: norms, the float embedding); bits/weight is over the quantized weights
only (scales included). Rows are appended to `--out` as JSON lines as they finish, and rows
already there are not redone, so a long run can be resumed.

Targets (issue 19, on SmolLM2): int8 within +2% of float32; GPTQ and AWQ int4 within +10%
and both better than RTN int4.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from llm.checkpoint import load_model
from llm.compress import calibration, ptq
from llm.compress.spec import PtqSpec
from llm.eval.runner import Settings, run_ppl_run
from llm.model.quantized import param_bytes

# name -> (method, fmt, bits, group: None = --group)
ROWS = {
    "float32": None,
    "rtn-int8": ("rtn", "int8", 8, 0),
    "rtn-int4": ("rtn", "int4", 4, None),
    "gptq-int4": ("gptq", "int4", 4, None),
    "awq-int4": ("awq", "int4", 4, None),
    "rtn-int3": ("rtn", "int4", 3, None),
    "gptq-int3": ("gptq", "int4", 3, None),
    "awq-int3": ("awq", "int4", 3, None),
    "smoothquant-w8a8": ("smoothquant", "int8", 8, 0),
    "rtn-uint4": ("rtn", "uint4", 4, None),
    "gptq-uint4": ("gptq", "uint4", 4, None),
}


def spec_of(name: str, args: argparse.Namespace) -> PtqSpec | None:
    row = ROWS[name]
    if row is None:
        return None
    method, fmt, bits, group = row
    return PtqSpec(method=method, fmt=fmt, bits=bits, group=args.group if group is None else group,
                   n_calib=args.calib_seqs, calib_len=args.calib_len)  # fmt: skip


def measure(model, name: str, tokens_BL, args: argparse.Namespace) -> dict:
    """One row: quantize (timed), then the `ppl` task on validation and ood."""
    cfg = model.config
    spec = spec_of(name, args)
    start = time.perf_counter()
    params = model.params
    if spec is not None:
        params = ptq.quantize_model(cfg.model, params, tokens_BL, spec)
        jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    eval_cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, batches=args.eval_batches)
    )
    got = run_ppl_run(dataclasses.replace(model, config=eval_cfg, params=params), Settings())
    n_values = sum(math.prod(x.shape) for x in jax.tree.leaves(model.params))
    return {
        "row": name,
        "spec": None if spec is None else dataclasses.asdict(spec),
        "quantize_s": round(seconds, 1),
        "weight_bytes": param_bytes(params),
        "bits_per_weight_all": 8 * param_bytes(params) / n_values,
        "bits_per_weight_quantized": ptq.quantized_bits(params) or 32.0,
        "ppl_validation": got["ppl:validation"].metrics["token_perplexity"],
        "ppl_ood": got["ppl:ood"].metrics["token_perplexity"],
        "eval_tokens": got["ppl:validation"].n + got["ppl:ood"].n,
    }


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["row"] == "float32"), None)
    rel = lambda r, k: f"{100 * (r[k] / base[k] - 1):+.1f}%" if base else "-"  # noqa: E731
    lines = [
        "| row | bits/weight (quantized) | weight MiB | Shakespeare val ppl | vs float | "
        "Milton ppl | vs float | quantize s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['bits_per_weight_quantized']:.2f} | "
            f"{r['weight_bytes'] / 2**20:.1f} | {r['ppl_validation']:.3f} | "
            f"{rel(r, 'ppl_validation')} | {r['ppl_ood']:.3f} | {rel(r, 'ppl_ood')} | "
            f"{r['quantize_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/runner_smollm2", help="model directory")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {list(ROWS)}")
    parser.add_argument("--group", type=int, default=64, help="group of the 4/3-bit rows")
    parser.add_argument("--calib-seqs", type=int, default=32, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--eval-batches", type=int, default=8, help="ppl batches per corpus")
    parser.add_argument("--out", default="/tmp/compression_rows.jsonl", help="JSON lines")
    args = parser.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    out = Path(args.out)
    done = {}
    if out.is_file():
        done = {r["row"]: r for r in map(json.loads, out.read_text().splitlines())}
    model = load_model(args.model)
    tokens_BL = jnp.asarray(calibration.calibration_tokens(
        model.tokenizer, n_seqs=args.calib_seqs, seq_len=args.calib_len))  # fmt: skip
    for name in names:
        if name in done:
            continue
        done[name] = measure(model, name, tokens_BL, args)
        with out.open("a") as f:
            f.write(json.dumps(done[name]) + "\n")
        print(json.dumps(done[name]), flush=True)
    print(table([done[n] for n in names]))


if __name__ == "__main__":
    main()

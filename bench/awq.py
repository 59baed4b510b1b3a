"""AWQ and SmoothQuant against round-to-nearest: per-layer errors and held-out perplexity.

    python bench/awq.py --model /tmp/runner_smollm2 --layers 0,10,20,29
    python bench/awq.py --model /tmp/runner_smollm2 --ppl --no-layers --rows loaded,rtn4,awq4

Per-layer table (`--layers`): on the float model's activations of the calibration windows
(Shakespeare's training split), for each AWQ scale group the output error of its Linears,
sum_i ||X W_i - X' Q(W_i')||^2, with plain RTN (grid point a = 0) and with the searched scale,
and the block output error ||block(x) - block_q(x)||^2 of RTN, AWQ without and with clipping.
Perplexity table (`--ppl`): token perplexity of the validation documents of Shakespeare and
Milton (`llm.eval.perplexity`, rolling windows) for float32, RTN and AWQ at int4 / int3 with
groups of 64 (SmolLM2's d_model 576 is not a multiple of 128), W8A8 without smoothing and
SmoothQuant W8A8 (alpha 0.5), each quantized layer by layer by `llm.compress.ptq`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from llm.checkpoint import load_model
from llm.compress import awq, calibration, ptq
from llm.compress.spec import PtqSpec
from llm.eval import perplexity
from llm.eval.likelihood import Scorer
from llm.model import quantized as qmodel

FORMATS = (("int4", 4), ("int4", 3))


def layer_table(model, tokens_BL, layers: set[int], group: int) -> None:
    cfg, params = model.config.model, model.params
    x_BLD = calibration.embed_inputs(cfg, params, tokens_BL)
    print("| layer | bits | group | RTN err | AWQ err | AWQ / RTN |")
    print("|---|---|---|---|---|---|")
    blocks = []
    for i in range(cfg.n_layers):
        layer = calibration.layer_params(params, i)
        if i in layers:
            for fmt, bits in FORMATS:
                spec = PtqSpec(method="awq", fmt=fmt, bits=bits, group=group)
                for g, _, errors in awq.awq_scales(cfg, layer, x_BLD, spec):
                    rtn, best = float(errors[0]), float(errors.min())
                    print(f"| {i} | {bits} | {g.prev} -> {','.join(g.linears)} | {rtn:.4g} "
                          f"| {best:.4g} | {best / rtn:.3f} |")  # fmt: skip
                blocks.append((i, bits, block_errors(cfg, layer, x_BLD, spec)))
        x_BLD = calibration.run_layer(cfg, layer, x_BLD)
    print("\n| layer | bits | block err RTN | AWQ no clip / RTN | AWQ / RTN |")
    print("|---|---|---|---|---|")
    for i, bits, (rtn, noclip, full) in blocks:
        print(f"| {i} | {bits} | {rtn:.4g} | {noclip / rtn:.3f} | {full / rtn:.3f} |")


def block_errors(cfg, layer, x_BLD, spec) -> tuple[float, float, float]:
    ref = calibration.run_layer(cfg, layer, x_BLD)
    err = lambda lay: float(jnp.sum((calibration.run_layer(cfg, lay, x_BLD) - ref) ** 2))  # noqa: E731
    rtn = awq.quantize_block(cfg, layer, fmt=spec.fmt, bits=spec.bits, group=spec.group)
    return (err(rtn), err(awq.awq_layer(cfg, layer, x_BLD, spec, clip=False)),
            err(awq.awq_layer(cfg, layer, x_BLD, spec)))  # fmt: skip


def ppl_runs(group: int) -> dict[str, PtqSpec | str | None]:
    runs: dict[str, PtqSpec | str | None] = {"loaded": None}  # the model as loaded
    for fmt, bits in FORMATS:
        for method in ("rtn", "awq"):
            runs[f"{method}{bits}"] = PtqSpec(method=method, fmt=fmt, bits=bits, group=group)
    runs["w8a8"] = "w8a8"  # int8 weights and per-token int8 activations, no smoothing
    runs["smoothquant"] = PtqSpec(method="smoothquant", fmt="int8", bits=8, group=0)
    return runs


def ppl_table(model, tokens_BL, group: int, max_len: int, rows: list[str], chars: int) -> None:
    cfg = model.config.model
    docs = {c: [dataclasses.replace(d, text=d.text[:chars] if chars else d.text)
                for d in perplexity.corpus_docs(model.config.data, c)]
            for c in ("shakespeare", "milton")}  # fmt: skip
    runs = ppl_runs(group)
    print("| model | bits/weight (blocks) | Shakespeare val ppl | Milton val ppl | quantize s |")
    print("|---|---|---|---|---|")
    for name in rows:
        spec, start = runs[name], time.perf_counter()
        if spec is None:
            params = model.params
        elif spec == "w8a8":
            params = qmodel.quantize_params(cfg, model.params, fmt="int8", bits=8, group=0,
                                            act_bits=8)  # fmt: skip
        else:
            params = ptq.quantize_model(cfg, model.params, tokens_BL, spec, progress=False)
        secs = time.perf_counter() - start
        scorer = Scorer(dataclasses.replace(model, params=params), max_len=max_len)
        ppl = [perplexity.metrics(perplexity.score_docs(scorer, d))["token_perplexity"]
               for d in docs.values()]  # fmt: skip
        print(f"| {name} | {ptq.quantized_bits(params) or 32:.2f} | {ppl[0]:.3f} | {ppl[1]:.3f} "
              f"| {secs:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory (load_model)")
    p.add_argument("--calib-seqs", type=int, default=32, help="calibration sequences")
    p.add_argument("--calib-len", type=int, default=256, help="tokens per calibration sequence")
    p.add_argument("--group", type=int, default=64, help="input features per weight scale")
    p.add_argument("--layers", default="0,10,20,29", help="layers of the per-layer table")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--ppl", action="store_true", help="also the perplexity table (slow)")
    p.add_argument("--max-len", type=int, default=512, help="scoring window (tokens)")
    p.add_argument("--rows", default=",".join(ppl_runs(64)), help="rows of the ppl table")
    p.add_argument("--eval-chars", type=int, default=0, help="score each document's first N "
                   "characters only (0 = whole documents)")  # fmt: skip
    a = p.parse_args()
    model = load_model(a.model)
    tokens_BL = np.asarray(calibration.calibration_tokens(
        model.tokenizer, n_seqs=a.calib_seqs, seq_len=a.calib_len))  # fmt: skip
    print(f"calibration: {a.calib_seqs} x {a.calib_len} tokens of Shakespeare's training split")
    if not a.no_layers:
        layer_table(model, tokens_BL, {int(i) for i in a.layers.split(",")}, a.group)
    if a.ppl:
        ppl_table(model, tokens_BL, a.group, a.max_len, a.rows.split(","), a.eval_chars)


if __name__ == "__main__":
    main()

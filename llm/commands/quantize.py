"""`llm quantize`: post-training quantization of a model directory (docs/compression.md).

llm quantize --checkpoint DIR --method rtn|gptq|awq|smoothquant --bits 8|4|3 --out OUT_DIR
             [--fmt int8|int4|uint4|nf4] [--group N] [--act-order/--no-act-order] [--damp D]
             [--alpha A] [--grid N] [--calib-seqs N] [--calib-len L] [--calib-corpus NAME]
             [--seed S] [--embeddings]

OUT_DIR is a model directory like `llm convert`'s (config, params with quantized leaves,
quantization.json, tokenizer), read by `llm eval`, `llm generate`, `llm serve` and eval.py.
Every argument combination is checked (and the model's config read) before the weights are
loaded: a bad one costs nothing.
"""

from __future__ import annotations

import argparse

from llm.cli_args import int_at_least, model_dir_errors, refuse

METHODS = ("rtn", "gptq", "awq", "smoothquant")
FORMATS = ("int8", "int4", "uint4", "nf4")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="post-training quantization (RTN, GPTQ, AWQ, SmoothQuant) of a model"
    )
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="DIR", help="model or training run directory")
    add("--out", required=True, metavar="OUT_DIR", help="model directory to write")
    add("--method", choices=METHODS, default="rtn", help="quantization method (default rtn)")
    add("--bits", type=int, choices=(8, 4, 3), default=4, help="bits per weight code")
    add("--fmt", choices=FORMATS, default=None, help="code format (int8 at 8 bits, else int4)")
    add("--group", type=int_at_least(0), default=None,
        help="inputs per scale, 0 = per output channel (0 at 8 bits, else 128)")  # fmt: skip
    add("--act-order", action=argparse.BooleanOptionalAction, default=True,
        help="GPTQ: quantize inputs by descending Hessian diagonal")  # fmt: skip
    add("--damp", type=float, default=0.01, help="GPTQ: Hessian dampening, times its mean diagonal")
    add("--alpha", type=float, default=0.5, help="SmoothQuant migration strength in [0, 1]")
    add("--grid", type=int_at_least(1), default=20, help="AWQ: grid points of the scale search")
    add("--calib-seqs", type=int_at_least(1), default=64, help="calibration sequences")
    add("--calib-len", type=int_at_least(2), default=256, help="tokens per calibration sequence")
    add("--calib-corpus", default="shakespeare", help="corpus whose training split calibrates")
    add("--seed", type=int, default=0, help="which calibration windows are drawn")
    add("--embeddings", action="store_true", help="also RTN-quantize token_embed / lm_head")
    parser.set_defaults(func=run)


def spec_of(args: argparse.Namespace):
    """The PtqSpec the arguments ask for; UsageError / ValueError for a combination that
    cannot work (raised before anything is loaded)."""
    from llm.compress.spec import PtqSpec

    fmt = args.fmt or ("int8" if args.bits == 8 else "int4")
    group = args.group if args.group is not None else (0 if args.bits == 8 else 128)
    refuse([
        (args.method == "smoothquant" and group != 0,
         "--method smoothquant is W8A8 with one scale per output channel: use --group 0"),
        (args.method != "gptq" and not args.act_order, "--no-act-order is a GPTQ option"),
        (args.method != "smoothquant" and args.alpha != 0.5, "--alpha is a SmoothQuant option"),
        (args.method != "awq" and args.grid != 20, "--grid is an AWQ option"),
    ])  # fmt: skip
    return PtqSpec(method=args.method, fmt=fmt, bits=args.bits, group=group,
                   act_order=args.act_order, damp=args.damp, alpha=args.alpha, grid=args.grid,
                   n_calib=args.calib_seqs, calib_len=args.calib_len, seed=args.seed,
                   quantize_embeddings=args.embeddings)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Checks, loads, calibrates, quantizes and writes; prints bytes before/after and time."""
    import dataclasses
    import time
    from pathlib import Path

    from llm.checkpoint import load_model
    from llm.checkpoint.load import model_config_of, quantization_of
    from llm.compress import calibration, ptq
    from llm.interop.model_dir import save_model, tokenizer_files_of

    spec = spec_of(args)
    if (Path(args.out) / "params").exists():
        raise FileExistsError(f"{Path(args.out) / 'params'} already exists; choose an empty --out")
    with model_dir_errors(args.checkpoint):
        cfg = model_config_of(args.checkpoint)
    if quantization_of(args.checkpoint):
        raise ValueError(f"{args.checkpoint} is already quantized; quantize the float model")
    ptq.check_spec(cfg.model, spec)
    if spec.method != "rtn" and spec.calib_len > cfg.model.max_seq_len:
        raise ValueError(f"--calib-len {spec.calib_len} exceeds the model's max_seq_len "
                         f"{cfg.model.max_seq_len}")  # fmt: skip
    files = tokenizer_files_of(args.checkpoint, cfg)
    start = time.perf_counter()
    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint)
    tokens_BL = None
    if spec.method != "rtn":
        tokens_BL = calibration.calibration_tokens(
            model.tokenizer, n_seqs=spec.n_calib, seq_len=spec.calib_len, seed=spec.seed,
            corpus=args.calib_corpus, data_cfg=cfg.data,
        )  # fmt: skip
    params = ptq.quantize_model(cfg.model, model.params, tokens_BL, spec)
    source = {"quantized_from": str(args.checkpoint), "ptq": dataclasses.asdict(spec),
              "calib_corpus": args.calib_corpus}  # fmt: skip
    save_model(args.out, cfg.model, params, tokenizer_files=files, source=source, data=cfg.data)
    _summary(model.params, params, args.out, time.perf_counter() - start)
    return 0


def _summary(before, after, out: str, seconds: float) -> None:
    from llm.compress.ptq import quantized_bits
    from llm.model.quantized import param_bytes

    b0, b1 = param_bytes(before), param_bytes(after)
    bits = quantized_bits(after)
    print(f"wrote {out}: params {b0 / 2**20:.1f} MiB -> {b1 / 2**20:.1f} MiB "
          f"({b0 / b1:.2f}x smaller), {bits:.2f} bits per quantized weight, "
          f"{seconds:.1f} s")  # fmt: skip

"""`llm prune`: pruning of a model directory (docs/compression.md).

llm prune --checkpoint DIR --out OUT_DIR --method magnitude|wanda|sparsegpt
          [--sparsity 0.5 | --nm 2:4] [--global] [--targets REGEX] [--block 128] [--damp 0.01]
          [--calib-seqs 64] [--calib-len 256] [--calib-corpus NAME] [--seed 0]
llm prune --checkpoint DIR --out OUT_DIR --structured --heads H --mlp F
          [--kv-mode groups|per_group] [--calib-...]

Unstructured and N:M pruning write a float model directory of the same shape with exact zeros
in place; its masks are not stored: they are the zeros themselves, which a fine-tuning run
from it (`train.init_from=OUT_DIR train.keep_sparsity=true`) turns into a frozen mask
(llm/compress/sparsity.py says why). `--structured` writes the smaller model (fewer heads,
kv heads, d_ff). OUT_DIR's source.json records the spec and each weight's sparsity. Every
argument combination is checked, and the model's config read, before weights are loaded.
"""

from __future__ import annotations

import argparse

from llm.cli_args import int_at_least, model_dir_errors, refuse

METHODS = ("magnitude", "wanda", "sparsegpt")
KV_MODES = ("groups", "per_group")


CALIB_DEFAULTS = {"n_calib": 64, "calib_len": 256, "seed": 0}  # the --calib-*/--seed defaults


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="pruning (magnitude, Wanda, SparseGPT, N:M, structured) of a model"
    )
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="DIR", help="model or training run directory")
    add("--out", required=True, metavar="OUT_DIR", help="model directory to write")
    add("--method", choices=METHODS, default="magnitude", help="unstructured / N:M method")
    add("--sparsity", type=float, default=None, help="fraction of each weight pruned (0.5)")
    add("--nm", default=None, metavar="N:M", help="keep N of every M inputs per output (2:4)")
    add("--global", dest="global_", action="store_true",
        help="magnitude: one threshold over all targets instead of one per matrix")  # fmt: skip
    add("--targets", default=None, metavar="REGEX", help="param paths pruned (block Linears)")
    add("--block", type=int_at_least(1), default=128, help="SparseGPT: rows per mask block")
    add("--damp", type=float, default=0.01, help="SparseGPT: Hessian dampening, times its mean")
    add("--structured", action="store_true", help="remove heads / MLP channels instead")
    add("--heads", type=int_at_least(0), default=0, help="structured: query heads per layer")
    add("--mlp", type=int_at_least(0), default=0, help="structured: MLP channels per layer")
    add("--kv-mode", choices=KV_MODES, default="groups",
        help="structured, GQA: remove whole KV groups or equal heads per group")  # fmt: skip
    add(
        "--calib-seqs",
        type=int_at_least(1),
        default=CALIB_DEFAULTS["n_calib"],
        help="calibration sequences",
    )
    add(
        "--calib-len",
        type=int_at_least(2),
        default=CALIB_DEFAULTS["calib_len"],
        help="tokens per calibration sequence",
    )
    add("--calib-corpus", default="shakespeare", help="corpus whose training split calibrates")
    add("--seed", type=int, default=0, help="which calibration windows are drawn")
    parser.set_defaults(func=run)


def _nm(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.isdigit() or not m.isdigit():
        raise ValueError(f"--nm {text!r}: expected N:M with integers, e.g. 2:4")
    return int(n), int(m)


def spec_of(args: argparse.Namespace):
    """The PruneSpec or StructuredSpec the arguments ask for; UsageError / ValueError for a
    combination that cannot work (raised before anything is loaded)."""
    from llm.compress.prune import PruneSpec
    from llm.compress.structured import StructuredSpec

    calib = dict(n_calib=args.calib_seqs, calib_len=args.calib_len, seed=args.seed)
    if args.structured:
        refuse([
            (args.sparsity is not None or args.nm or args.global_ or args.targets,
             "--structured removes whole heads / channels: drop --sparsity/--nm/--global/"
             "--targets"),
            (args.method != "magnitude", "--structured picks heads by calibration; drop --method"),
        ])  # fmt: skip
        return StructuredSpec(heads=args.heads, mlp=args.mlp, kv_mode=args.kv_mode, **calib)
    refuse([
        (args.heads or args.mlp or args.kv_mode != "groups",
         "--heads/--mlp/--kv-mode need --structured"),
        (args.sparsity is not None and args.nm, "give --sparsity or --nm, not both"),
        (args.method != "sparsegpt" and (args.block != 128 or args.damp != 0.01),
         "--block/--damp are SparseGPT options"),
        (args.method == "magnitude" and (calib != CALIB_DEFAULTS
                                         or args.calib_corpus != "shakespeare"),
         "magnitude pruning reads no calibration data: drop --calib-*/--seed"),
    ])  # fmt: skip
    extra = {"targets": args.targets} if args.targets else {}
    return PruneSpec(
        method=args.method,
        sparsity=0.5 if args.sparsity is None else args.sparsity,
        nm=_nm(args.nm),
        scope="global" if args.global_ else "layer",
        block=args.block,
        damp=args.damp,
        **extra,
        **calib,
    )


def run(args: argparse.Namespace) -> int:
    """Checks, loads, calibrates, prunes and writes; prints the sparsity and time."""
    import dataclasses
    import time
    from pathlib import Path

    from llm.checkpoint import load_model
    from llm.checkpoint.load import model_config_of, quantization_of
    from llm.compress import calibration, prune, structured

    spec = spec_of(args)
    if (Path(args.out) / "params").exists():
        raise FileExistsError(f"{Path(args.out) / 'params'} already exists; choose an empty --out")
    with model_dir_errors(args.checkpoint):
        cfg = model_config_of(args.checkpoint)
    if Path(args.checkpoint).is_dir() and quantization_of(args.checkpoint):
        raise ValueError(f"{args.checkpoint} holds quantized weights; prune the float model, "
                         "then quantize the pruned one (`llm quantize`)")  # fmt: skip
    calibrated = args.structured or spec.calibrated
    if calibrated and spec.calib_len > cfg.model.max_seq_len:
        raise ValueError(f"--calib-len {spec.calib_len} exceeds the model's max_seq_len "
                         f"{cfg.model.max_seq_len}")  # fmt: skip
    if args.structured:
        structured.shrunk_config(cfg.model, spec)  # raises for impossible counts, before loading
    else:
        prune.block_targets(cfg.model, spec)
    start = time.perf_counter()
    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint)
    tokens_BL = None
    if calibrated:
        tokens_BL = calibration.calibration_tokens(
            model.tokenizer, n_seqs=spec.n_calib, seq_len=spec.calib_len, seed=spec.seed,
            corpus=args.calib_corpus, data_cfg=cfg.data,
        )  # fmt: skip
    source = {"pruned_from": str(args.checkpoint), "prune": dataclasses.asdict(spec),
              "calib_corpus": args.calib_corpus if calibrated else None}  # fmt: skip
    if args.structured:
        new_cfg, params, _ = structured.prune_structured(cfg.model, model.params, tokens_BL, spec)
        summary = f"n_heads {cfg.model.n_heads} -> {new_cfg.n_heads}, kv_heads "
        summary += f"{cfg.model.kv_heads} -> {new_cfg.kv_heads}, d_ff {cfg.model.d_ff} -> "
        summary += f"{new_cfg.d_ff}"
    else:
        new_cfg = cfg.model
        params, masks = prune.prune_model(cfg.model, model.params, tokens_BL, spec)
        source["sparsity"] = prune.sparsity_of(params, masks)
        summary = f"{source['sparsity']['total']:.1%} of the targeted weights are zero"
    _write(args.out, args.checkpoint, cfg, new_cfg, params, source)
    print(f"wrote {args.out}: {summary}, {time.perf_counter() - start:.1f} s")
    return 0


def _write(out: str, checkpoint: str, cfg, new_cfg, params, source: dict) -> None:
    """save_model with the source's tokenizer files and data section."""
    from llm.interop.model_dir import save_model, tokenizer_files_of

    files = tokenizer_files_of(checkpoint, cfg)
    save_model(out, new_cfg, params, tokenizer_files=files, source=source, data=cfg.data)

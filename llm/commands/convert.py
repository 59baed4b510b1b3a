"""`llm convert from-hf|from-gguf|to-hf|to-gguf`: checkpoints in and out (docs/interop.md).

llm convert from-hf HF_DIR OUT_DIR        config.json + safetensors + tokenizer -> OUT_DIR
llm convert from-gguf FILE.gguf OUT_DIR   llama.cpp checkpoint -> OUT_DIR (dequantized, or
                                          --keep-quantized: Q8_0/Q4_0/Q4_1 blocks stay QArrays)
llm convert to-hf RUN_DIR OUT_DIR         imported model or training run -> HF directory
llm convert to-gguf --checkpoint DIR --out FILE.gguf --type f32|f16|q8_0|q4_0 [--embed-type T]
                                          llama-architecture model -> GGUF (llama.cpp)
"""

from __future__ import annotations

import argparse

from llm.cli_args import model_dir_errors

DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")


def register(subparsers: argparse._SubParsersAction) -> None:
    what = "import Hugging Face and GGUF models, export Hugging Face"
    parser = subparsers.add_parser("convert", help=what)
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    for name, src, what in (
        ("from-hf", "HF_DIR", "a Hugging Face model directory (config.json, safetensors)"),
        ("from-gguf", "FILE", "a GGUF file (llama.cpp)"),
        ("to-hf", "RUN_DIR", "an imported model directory or a training run directory"),
    ):
        p = sub.add_parser(name, help=f"convert {what}")
        p.add_argument("source", metavar=src, help=what)
        p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
        if name != "to-hf":
            p.add_argument("--dtype", choices=DTYPES, default="float32", help="param dtype")
        if name == "from-gguf":
            p.add_argument(
                "--keep-quantized",
                action="store_true",
                help="keep Q8_0/Q4_0/Q4_1 tensors quantized (QArray leaves); others dequantized",
            )
        p.set_defaults(func=run)
    p = sub.add_parser("to-gguf", help="export a llama-architecture model to a GGUF file")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model or run directory")
    p.add_argument("--out", required=True, metavar="FILE", help="GGUF file to write")
    p.add_argument("--type", choices=GGUF_TYPES, default="f32", help="type of the 2-D weights")
    p.add_argument(
        "--embed-type",
        choices=GGUF_TYPES,
        default=None,
        help="type of the token table and output head (default: --type)",
    )
    p.add_argument("--name", default=None, help="general.name (default: the file's stem)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Bad input (UnsupportedConfig, a missing file, an existing OUT_DIR) is reported by
    llm.cli as one line with exit status 2."""
    if args.direction == "from-hf":
        from llm.interop import import_hf

        with model_dir_errors(args.source):
            cfg = import_hf(args.source, args.out_dir, param_dtype=args.dtype)
    elif args.direction == "from-gguf":
        from llm.interop import import_gguf

        cfg = import_gguf(
            args.source, args.out_dir, param_dtype=args.dtype, keep_quantized=args.keep_quantized
        )
    elif args.direction == "to-gguf":
        return _to_gguf(args)
    else:
        return _to_hf(args.source, args.out_dir)
    m = cfg.model
    print(
        f"wrote {args.out_dir}: {m.n_layers} layers, d_model {m.d_model}, "
        f"{m.n_heads}/{m.kv_heads} heads, vocab {m.vocab_size}, {m.param_dtype}"
    )
    return 0


def _to_hf(source: str, out_dir: str) -> int:
    from llm.checkpoint import load_model
    from llm.interop import export_hf
    from llm.interop.model_dir import tokenizer_dir

    with model_dir_errors(source):
        model = load_model(source)
    cfg, params, tokenizer = model.config, model.params, model.tokenizer
    tok_dir = tokenizer_dir(source)
    export_hf(cfg.model, params, out_dir, tokenizer=tokenizer, tokenizer_dir=tok_dir)
    print(f"wrote {out_dir}: config.json and safetensors")
    if tok_dir is None:
        print(f"note: tokenizer {cfg.data.tokenizer!r} has no Hugging Face file; none written")
    return 0


def _to_gguf(args: argparse.Namespace) -> int:
    from llm.checkpoint import load_model
    from llm.interop.gguf_export import export_gguf
    from llm.interop.model_dir import tokenizer_dir

    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint)
    done = export_gguf(
        model.config,
        model.params,
        args.out,
        kind=args.type,
        embed_kind=args.embed_type,
        tokenizer_dir=tokenizer_dir(args.checkpoint),
        name=args.name,
    )
    types = ", ".join(f"{n} {k}" for k, n in sorted(done.types.items()))
    print(f"wrote {done.path}: {done.nbytes / 2**20:.1f} MiB, tensors {types}")
    if done.f16_fallback:
        print(f"note: {len(done.f16_fallback)} matrices have rows that are not whole blocks: F16")
    return 0

"""`llm convert from-hf|from-gguf|to-hf`: checkpoints in and out (see docs/interop.md).

llm convert from-hf HF_DIR OUT_DIR        config.json + safetensors + tokenizer -> OUT_DIR
llm convert from-gguf FILE.gguf OUT_DIR   dequantized llama.cpp checkpoint -> OUT_DIR
llm convert to-hf RUN_DIR OUT_DIR         imported model or training run -> HF directory
"""

from __future__ import annotations

import argparse

from llm.cli_args import model_dir_errors

DTYPES = ("float32", "bfloat16", "float16")


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

        cfg = import_gguf(args.source, args.out_dir, param_dtype=args.dtype)
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

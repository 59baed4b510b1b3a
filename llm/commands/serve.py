"""`llm serve --checkpoint RUN_DIR`: an OpenAI-compatible HTTP server with continuous batching.

    llm serve --checkpoint runs/tiny --port 8000
    curl localhost:8000/v1/completions -d '{"prompt": "Once", "max_tokens": 32, "stream": true}'
    llm serve --config configs/tiny.yaml serve.max_concurrent=16   # random weights (smoke test)
    llm serve --checkpoint models/smollm2 --adapter sql=runs/lora_sql --adapter chat=peft_dir
    curl localhost:8000/v1/completions -d '{"prompt": "Once", "adapter": "sql"}'

Adapters (`--adapter NAME=DIR`, repeatable) are LoRA runs or Hugging Face PEFT directories
made for the --checkpoint base; each is checked against the base at start-up. One base stays
in memory; a request names its adapter (`adapter` or `model`), and the base with that adapter
merged is cached (`--adapter-cache`, see llm/inference/adapters.py).

Limits come from the `serve` section of the config (`llm/config/serve.py`); `serve.*`
overrides apply to a checkpoint's config too, and `--port`/`--host` are shorthands.
"""

from __future__ import annotations

import argparse

from llm.cli_args import UsageError, add_config_args, int_at_least, model_dir_errors, refuse

ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._:-]*"  # what a request's model / adapter field names


def _port(text: str) -> int:
    port = int_at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (0 = any free port), got {port}")
    return port


def _adapter(text: str) -> tuple[str, str]:
    import re

    name, sep, directory = text.partition("=")
    if not sep or not directory:
        raise argparse.ArgumentTypeError(f"{text!r} must be NAME=DIR")
    if not re.fullmatch(ADAPTER_NAME, name):
        raise argparse.ArgumentTypeError(f"adapter name {name!r} must match {ADAPTER_NAME}")
    return name, directory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible completion server")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="training run directory")
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--host", help="interface (default: serve.host)")
    parser.add_argument("--port", type=_port, help="port (default: serve.port)")
    parser.add_argument("--adapter", type=_adapter, action="append", default=[],
                        metavar="NAME=DIR", help="an adapter requests can name (repeatable): "
                        "a LoRA run or a Hugging Face PEFT directory")  # fmt: skip
    parser.add_argument("--adapter-cache", type=int_at_least(0), default=None, metavar="N",
                        help="merged adapters kept in memory (default: all; 0: merge on "
                        "every switch)")  # fmt: skip
    add_config_args(parser)
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace, config):
    """The run's (or given config's) serve section, with --host/--port applied."""
    import dataclasses

    changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return dataclasses.replace(config.serve, **changes)


def check_arguments(args: argparse.Namespace) -> None:
    """With --checkpoint, the model and its config come from the run: only serve.* applies."""
    others = [o for o in args.overrides if not o.startswith("serve.")]
    refuse([
        (args.checkpoint and args.config,
         "--config gives random weights, a --checkpoint brings its own config: give one "
         "(serve.* overrides apply to either)"),
        (args.checkpoint and others,
         f"{others[0] if others else ''}: with --checkpoint only serve.* overrides apply (the "
         "model and its config come from the checkpoint)"),
        (not args.checkpoint and not args.config and not args.overrides,
         "give --checkpoint RUN_DIR (a trained model), or --config FILE for random weights"),
        (args.step is not None and not args.checkpoint,
         "--step picks a checkpoint of --checkpoint RUN_DIR, and none was given"),
        (args.adapter and not args.checkpoint,
         "--adapter NAME=DIR adapts a base model: give the base as --checkpoint DIR"),
        (len({n for n, _ in args.adapter}) < len(args.adapter),
         f"--adapter names {sorted(n for n, _ in args.adapter)} repeat a name"),
        (args.adapter_cache is not None and not args.adapter,
         "--adapter-cache applies to --adapter NAME=DIR, and none was given"),
    ])  # fmt: skip


def with_serve_overrides(config, overrides: list[str]):
    """`config` with `serve.key=value` overrides applied and validated."""
    import dataclasses

    from llm.config import ServeConfig, from_dict, to_dict
    from llm.config.base import apply_overrides

    data = apply_overrides({"serve": to_dict(config.serve)}, overrides)["serve"]
    return dataclasses.replace(config, serve=from_dict(ServeConfig, data, source="overrides"))


def run(args: argparse.Namespace) -> int:
    from llm.cli_args import config_from_args
    from llm.inference import Engine
    from llm.inference.loading import model_for_serving
    from llm.inference.server import Server

    check_arguments(args)
    config = None if args.checkpoint else config_from_args(args)
    with model_dir_errors(args.checkpoint):
        model = model_for_serving(args.checkpoint, args.step, config)
    run_config = with_serve_overrides(model.config, args.overrides if args.checkpoint else [])
    cfg = serve_config(args, run_config)
    bank = adapter_bank(args, model)
    params = bank.base if bank is not None else model.params
    engine = Engine(model.config.model, params, model.tokenizer, max_len=cfg.max_len)
    try:
        server = Server(engine, cfg, model.name, bank)
    except OSError as err:  # the address is taken, or not one of this machine's
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err}); "
                         "choose another --port or --host") from err  # fmt: skip
    host, port = server.address
    print(f"serving {model.name!r} on http://{host}:{port} "
          f"({cfg.max_concurrent} rows, context {engine.max_len})", flush=True)  # fmt: skip
    if bank is not None:
        print(f"adapters: {', '.join(bank.names)} (merged copies cached: "
              f"{bank.cache_size})", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()
    return 0


def adapter_bank(args: argparse.Namespace, model):
    """The --adapter directories loaded and checked against the base (None without any)."""
    from llm.inference.adapters import AdapterBank, load_adapter

    if not args.adapter:
        return None
    adapters = {}
    for name, directory in args.adapter:
        with model_dir_errors(directory):
            adapters[name] = load_adapter(directory, model)
    if model.name in adapters:
        raise UsageError(f"--adapter {model.name}=...: the base model answers to that name; "
                         "choose another")  # fmt: skip
    cache = -1 if args.adapter_cache is None else args.adapter_cache
    return AdapterBank(model.params, adapters, cache)

"""`llm serve --checkpoint RUN_DIR`: an OpenAI-compatible HTTP server with continuous batching.

    llm serve --checkpoint runs/tiny --port 8000
    curl localhost:8000/v1/completions -d '{"prompt": "Once", "max_tokens": 32, "stream": true}'
    llm serve --config configs/tiny.yaml serve.max_concurrent=16   # random weights (smoke test)

Limits come from the `serve` section of the config (`llm/config/serve.py`); `--port`/`--host`
override the config for convenience.
"""

from __future__ import annotations

import argparse
import sys

from llm.cli_args import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible completion server")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="training run directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--host", help="interface (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    add_config_args(parser)
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace, config):
    """The run's (or given config's) serve section, with --host/--port applied."""
    import dataclasses

    changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return dataclasses.replace(config.serve, **changes)


def run(args: argparse.Namespace) -> int:
    from llm.cli_args import config_from_args
    from llm.config import ConfigError
    from llm.inference import Engine
    from llm.inference.loading import load_model
    from llm.inference.server import Server

    config = None if args.checkpoint else config_from_args(args)
    try:
        model = load_model(args.checkpoint, args.step, config)
        cfg = serve_config(args, model.config)
        engine = Engine(model.config.model, model.params, model.tokenizer, max_len=cfg.max_len)
        server = Server(engine, cfg, model.name)
    except (ValueError, ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    host, port = server.address
    print(f"serving {model.name!r} on http://{host}:{port} "
          f"({cfg.max_concurrent} rows, context {engine.max_len})", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()
    return 0

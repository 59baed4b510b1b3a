"""The `llm` console script: one subcommand per module in `llm/commands/`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run`. Modules import heavy dependencies (jax) inside `run`, so `llm --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import llm.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm", description="Large language models in JAX.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(llm.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"llm.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

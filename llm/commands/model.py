"""`llm model [--config FILE] [key=value ...]`: counts, FLOPs and memory, nothing allocated."""

from __future__ import annotations

import argparse

from llm.cli_args import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model", help="print parameter counts, FLOPs/token and memory estimates for a config"
    )
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.model import accounting

    print(accounting.report(config_from_args(args)))
    return 0

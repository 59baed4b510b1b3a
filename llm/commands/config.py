"""`llm config [--config FILE] [key=value ...]`: print the resolved, validated config as YAML."""

from __future__ import annotations

import argparse

import yaml

from llm.cli_args import add_config_args, config_from_args
from llm.config import to_dict


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="print the resolved config as YAML")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(config_from_args(args)), sort_keys=False), end="")
    return 0

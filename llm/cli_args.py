"""Arguments shared by commands that take a config: `--config FILE` and `key=value` overrides."""

from __future__ import annotations

import argparse
import sys

from llm.config import Config, ConfigError, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset in configs/ (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.n_layers=4")


def config_from_args(args: argparse.Namespace) -> Config:
    """Loads the config or exits with status 2 and the validation message."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

"""What commands share: `--config FILE` with `key=value` overrides, checked argument types, and
`UsageError`, the bad-input error `llm.cli.main` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from llm.config import Config, ConfigError, load_config


class UsageError(ValueError):
    """Arguments that cannot work together or cannot be done; the message says what to do."""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset in configs/ (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.n_layers=4")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of `--config` and the overrides; ConfigError names the file and key."""
    from llm.config.base import parse_value

    for item in args.overrides:  # checked first, so a YAML error below is the file's
        try:
            parse_value(item.partition("=")[2])
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "syntax error"
            message = f"override {item!r}: the value is not valid YAML ({problem})"
            raise ConfigError(message) from err
    with yaml_errors_named(args.config):
        return load_config(args.config, args.overrides)


@contextlib.contextmanager
def yaml_errors_named(path: str | Path | None) -> Iterator[None]:
    """A YAML syntax error inside becomes a ConfigError naming `path`, line and column."""
    try:
        yield
    except yaml.MarkedYAMLError as err:
        raise ConfigError(yaml_message(err, str(path) if path else None)) from err


@contextlib.contextmanager
def model_dir_errors(directory: str | Path | None) -> Iterator[None]:
    """Syntax errors in a model directory's config files name the directory (parsers that
    read text, not files, cannot)."""
    try:
        with yaml_errors_named(Path(directory) / "config.yaml" if directory else None):
            yield
    except json.JSONDecodeError as err:
        raise ConfigError(f"{directory}: a .json file in it is not valid JSON ({err})") from err


def yaml_message(err: yaml.MarkedYAMLError, path: str | None = None) -> str:
    """`path:line:column: problem` of a YAML syntax error (PyYAML's own text spans lines)."""
    mark = err.problem_mark or err.context_mark
    named = mark is not None and not mark.name.startswith("<")  # "<unicode string>": no file
    where = path or (mark.name if named else "config")
    if mark is not None:
        where += f":{mark.line + 1}:{mark.column + 1}"
    what = err.problem or "syntax error"
    return f"{where}: invalid YAML: {what}" + (f" ({err.context})" if err.context else "")


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low` (argparse names the flag in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """argparse type: a finite float (nan and inf are never meaningful settings here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def refuse(rules: list[tuple[object, str]]) -> None:
    """Raises UsageError with the message of the first rule whose condition is true.

    Commands list here the argument combinations that would be ignored or cannot work, so
    that no argument is ever dropped silently."""
    for condition, message in rules:
        if condition:
            raise UsageError(message)

"""The `llm` console script: one subcommand per module in `llm/commands/`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run`. Modules import heavy dependencies (jax) inside `run`, so `llm --help` is fast.

Every command fails the same way, here and nowhere else: one line on stderr,
`llm <command>: error: <what is wrong and what to do>`, and no traceback unless `--debug`.
  exit 2  bad input: an argument, a config key, a file (the project raises ValueError and its
          subclasses for these: ConfigError, CheckpointMismatch, SourceError, UsageError...),
          a missing file or directory, a YAML syntax error
  exit 1  an expected failure that is not the input's fault: a download, every checkpoint
          unreadable, a missing optional package, another OS error
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import yaml

import llm.commands
from llm.cli_args import yaml_message

# File errors that mean "the path you gave is wrong" (other OSErrors are the machine's).
BAD_PATH = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError
)  # fmt: skip
# (module, class) of expected failures, matched only once their module is imported.
FAILURES = (
    ("llm.data.corpora", "CorpusDownloadError"),
    ("llm.checkpoint.manager", "NoUsableCheckpoint"),
    ("llm.train.loop", "TrainingDiverged"),
)
MAX_DETAIL_LINES = 4  # a multi-line message keeps this many detail lines (--debug shows all)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the argument (not the usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llm", description="Large language models in JAX.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(llm.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"llm.commands.{info.name}")
        module.register(subparsers)
    for sub in _subparsers(parser):
        _add_common(sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser` (commands and their actions), depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_subparsers(sub)]
    return found


def _add_common(sub: argparse.ArgumentParser) -> None:
    """`--debug` after the command too, and the command's name for error messages."""
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks of errors")  # fmt: skip
    sub.set_defaults(prog=sub.prog)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `llm ... | head`: the reader left; no traceback, no more output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process killed by SIGPIPE
    except Exception as err:
        status = exit_status(err)
        if status is None or args.debug:
            raise
        print(f"{args.prog}: error: {one_line(err)}", file=sys.stderr)
        return status


def exit_status(err: BaseException) -> int | None:
    """2 for bad input, 1 for an expected failure, None for a bug (see the module docstring)."""
    if isinstance(err, (ValueError, yaml.YAMLError, *BAD_PATH)):
        return 2
    for module, name in FAILURES:
        if module in sys.modules and isinstance(err, getattr(sys.modules[module], name)):
            return 1
    if isinstance(err, ImportError):
        return None if (err.name or "llm").startswith("llm") else 1
    return 1 if isinstance(err, OSError) else None


def one_line(err: BaseException) -> str:
    """The error's message on one line: detail lines joined with "; ", at most a few."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, ImportError) and str(err).startswith("No module named"):
        return f"needs the optional package {err.name!r}; see the extras in pyproject.toml"
    if isinstance(err, yaml.MarkedYAMLError):
        return yaml_message(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    head, details = lines[0], lines[1:]
    if len(details) > MAX_DETAIL_LINES:  # keep the last line too: messages end with advice
        more = len(details) - MAX_DETAIL_LINES + 1
        details = [*details[: MAX_DETAIL_LINES - 2], f"... {more} more (--debug shows all)",
                   details[-1]]  # fmt: skip
    if not details:
        return head
    return head + (" " if head.endswith(":") else "; ") + "; ".join(details)


if __name__ == "__main__":
    sys.exit(main())

"""Subcommands of the `llm` console script, one module each (see `llm/cli.py`)."""

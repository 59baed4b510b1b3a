"""Train a model: `python train.py [--config configs/X.yaml] [key=value ...] [--dry_run]`.

With no arguments, trains configs/default.yaml (a small model on Shakespeare, about ten
minutes on 2 CPU cores), evaluates it and prints a sample. See docs/training.md.
The same as `llm train ...`, errors included (one line, exit status 2 for bad input).
"""

import sys

from llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Train a model: `python train.py [--config configs/X.yaml] [key=value ...] [--dry_run]`.

With no arguments, trains configs/default.yaml (a small model on Shakespeare, about ten
minutes on 2 CPU cores), evaluates it and prints a sample. See docs/training.md.
"""

import argparse
import sys

from llm.commands import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    train.add_arguments(parser)
    sys.exit(train.run(parser.parse_args()))

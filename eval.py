"""Evaluate a run: `python eval.py --checkpoint RUN_DIR [--data CORPUS ...]`.

Prints perplexity and bits per byte on the run's validation split, the out-of-domain corpus
and any `--data` corpora, then a few samples. See docs/training.md.
"""

import argparse
import sys

from llm.commands import eval as eval_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    eval_command.add_arguments(parser)
    sys.exit(eval_command.run(parser.parse_args()))

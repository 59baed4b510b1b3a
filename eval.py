"""Evaluate a run: `python eval.py --checkpoint RUN_DIR [--data CORPUS ...]`.

Prints perplexity and bits per byte on the run's validation split, the out-of-domain corpus
and any `--data` corpora, then a few samples. See docs/training.md.
The same as `llm eval ...`, errors included (one line, exit status 2 for bad input).
"""

import sys

from llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))

"""Evaluate a model: `python eval.py --checkpoint DIR [--data CORPUS ...]` or, with tasks,
`python eval.py --checkpoint DIR --tasks ppl,mc:PATH,gen:PATH,... [--shots K] [--out FILE]`.

Without --tasks: perplexity and bits per byte on the run's validation split, the
out-of-domain corpus and any `--data` corpora, then a few samples (docs/training.md).
With --tasks: multiple choice, generation, perplexity and harness tasks on any model
directory, a table with 95% intervals and a results JSON (docs/evaluation.md).
The same as `llm eval ...`, errors included (one line, exit status 2 for bad input).
"""

import sys

from llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))

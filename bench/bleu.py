"""Speed of our corpus BLEU (llm/eval/bleu.py) against sacrebleu's on 10k seeded sentence pairs.

    python bench/bleu.py

Both tokenisers' caches are cleared before each run, so every run tokenises from scratch;
runs alternate between the two, five each. Scores must agree (the parity tests hold them equal
to 1e-6); the table gives each run's seconds. Results: docs/evaluation.md, "Generation metrics".
"""

from __future__ import annotations

import logging
import random
import time

import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp

from llm.eval import bleu

WORDS = "the a cat dog sat on mat log bird flew over it , . 3.14 1,000 well-known (hi) café"


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng, words = random.Random(seed), WORDS.split()

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))

    return [text() for _ in range(n)], [[text() for _ in range(n)]]


def ours(hyps: list[str], refs: list[list[str]]) -> float:
    bleu.tokenize_13a.cache_clear()
    return bleu.corpus_bleu(hyps, refs).score


def theirs(hyps: list[str], refs: list[list[str]]) -> float:
    Tokenizer13a.__call__.cache_clear()
    TokenizerRegexp.__call__.cache_clear()
    return sacrebleu.corpus_bleu(hyps, refs).score


def main() -> None:
    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # its 'forgot to detokenize' note
    hyps, refs = corpus(10_000)
    print(f"| {'implementation':<15} | {'seconds':>8} | {'BLEU':>10} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 12}|")
    for name, fn in [("llm.eval.bleu", ours), ("sacrebleu", theirs)] * 5:
        start = time.perf_counter()
        score = fn(hyps, refs)
        print(f"| {name:<15} | {time.perf_counter() - start:8.3f} | {score:10.6f} |")


if __name__ == "__main__":
    main()

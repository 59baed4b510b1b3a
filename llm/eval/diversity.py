"""Diversity of a set of generated texts, with no references.

* distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models", NAACL, section 4.3): the number of distinct n-grams over the whole
  set divided by the total number of n-grams in it. Tokens are whitespace words; an n-gram
  never spans two texts. 1.0 when no n-gram repeats; 0.0 for a set with no n-gram at all.
* self-BLEU (Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models",
  SIGIR): each text in turn is the hypothesis and every other text a reference; the
  sentence BLEUs are averaged. Higher means less diverse. Our variant is `bleu.sentence_bleu`
  (sacrebleu's sentence BLEU: 13a tokens, n-grams up to `max_order`, "exp" smoothing,
  effective order, closest-reference brevity penalty) on a 0-100 scale; Texygen itself uses
  NLTK's sentence_bleu with smoothing method 1 on 0-1, so figures differ from papers that
  used it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from llm.eval.bleu import MAX_ORDER, sentence_bleu


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over `texts` (whitespace tokens)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    if n < 1:
        raise ValueError(f"{n=} must be at least 1")
    grams: Counter = Counter()
    for text in texts:
        words = text.split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = grams.total()
    return len(grams) / total if total else 0.0


def self_bleu(texts: Sequence[str], *, max_order: int = MAX_ORDER) -> float:
    """Mean sentence BLEU (0-100) of each text against all the others."""
    if isinstance(texts, str) or len(texts) < 2:
        raise ValueError("self-BLEU needs a list of at least two texts")
    scores = [
        sentence_bleu(text, [*texts[:i], *texts[i + 1 :]], max_order=max_order).score
        for i, text in enumerate(texts)
    ]
    return sum(scores) / len(scores)

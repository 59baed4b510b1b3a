"""Exact match and token F1 of short answers, the metrics of SQuAD v1.1 (Rajpurkar et al.
2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text", arXiv:1606.05250), as its
official evaluation script defines them; lm-evaluation-harness's SQuAD-style tasks (e.g.
`qasper`'s metrics) carry the same script, which the tests hold us equal to.

`normalize_answer(s)`: lowercase; delete every ASCII punctuation character
(`string.punctuation`); replace the whole words "a", "an", "the" by a space; collapse
whitespace. Then, against each reference, take the best:
  * exact match: 1.0 when the normalised strings are equal, else 0.0;
  * token F1: over the normalised whitespace tokens, common = sum_t min(count_hyp(t),
    count_ref(t)); 0 when common = 0 (so also when either side is empty: v1.1's rule, unlike
    v2.0's, which scores an empty answer 1 against an empty reference); else
    P = common / |hyp|, R = common / |ref|, F1 = 2PR / (P + R).
This is a stricter normalisation than llm/eval/exact_match.py's `normalise`, which keeps
articles and inner punctuation on purpose (see its docstring).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalised answer (the module docstring gives the steps, in order)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check(refs: Sequence[str]) -> None:
    if isinstance(refs, str) or not refs:
        raise ValueError("refs must be a non-empty list of reference strings")


def exact_match(hyp: str, refs: Sequence[str]) -> float:
    """1.0 when `hyp` equals any reference after `normalize_answer`, else 0.0."""
    _check(refs)
    answer = normalize_answer(hyp)
    return float(any(answer == normalize_answer(ref) for ref in refs))


def _f1(hyp_tokens: list[str], ref_tokens: list[str]) -> float:
    common = sum((Counter(hyp_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(hyp: str, refs: Sequence[str]) -> float:
    """The best token F1 of `hyp` against any reference (0-1)."""
    _check(refs)
    hyp_tokens = normalize_answer(hyp).split()
    return max(_f1(hyp_tokens, normalize_answer(ref).split()) for ref in refs)

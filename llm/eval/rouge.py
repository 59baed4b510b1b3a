"""ROUGE-N, ROUGE-L and ROUGE-Lsum (Lin 2004, "ROUGE: A Package for Automatic Evaluation of
Summaries", ACL workshop), computed exactly as Google's `rouge-score` 0.1.2 RougeScorer
(github.com/google-research/google-research/tree/master/rouge), the reimplementation of
ROUGE-1.5.5.pl that most papers now report. Tests hold every score equal to it to 1e-6.

Tokens: the text lowercased, every run of characters other than [a-z0-9] made a space, split;
with `stem`, tokens longer than 3 characters go through the Porter stemmer (nltk's, as
rouge-score uses). Everything outside ASCII letters and digits is dropped, so ROUGE is
meaningless for scripts such as CJK.
  * ROUGE-N: clipped n-gram overlap o = sum_g min(count_hyp(g), count_ref(g));
    P = o / #hyp n-grams, R = o / #ref n-grams (each denominator at least 1).
  * ROUGE-L: P = LCS(hyp, ref) / |hyp|, R = LCS / |ref| (longest common subsequence).
  * ROUGE-Lsum (summary level, Lin 2004 section 3.2): texts split into sentences at "\\n";
    for each reference sentence, the union of the token positions of its LCS with every
    hypothesis sentence; the hits are those union tokens, each token counted at most as often
    as it occurs in both summaries; P = hits / |hyp|, R = hits / |ref|. The LCS chosen among
    equally long ones matters for the union; it is the one rouge-score's backtrack reads out.
  * F = 2PR / (P + R) (0 when P + R = 0); any score with an empty side is 0.
With several references an item takes, per ROUGE type, the scores of the reference with the
best F (the first on a tie), like rouge-score's `score_multi`. A corpus figure is the mean F
over items (what rouge-score's BootstrapAggregator reports as the mid value, without resampling).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from llm.eval.bleu import progress_bar, references_per_segment

TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")  # the default set; any rougeN with N in 1..9
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_TOKEN = re.compile(r"^[a-z0-9]+$")
_ROUGE_N = re.compile(r"rouge([1-9])$")


@dataclasses.dataclass(frozen=True)
class RougeScore:
    """One ROUGE score of one item, in 0-1."""

    precision: float
    recall: float
    fmeasure: float


def _score(overlap: int, n_hyp: int, n_ref: int) -> RougeScore:
    p, r = overlap / max(n_hyp, 1), overlap / max(n_ref, 1)
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


@lru_cache(maxsize=1)
def _porter_stemmer():
    from nltk.stem.porter import PorterStemmer  # rouge-score's stemmer; imported only to stem

    return PorterStemmer()


@lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    return _porter_stemmer().stem(word)


def tokenize(text: str, stem: bool = False) -> list[str]:
    """rouge-score's tokens of `text` (the module docstring gives the rule)."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if stem:
        tokens = [_stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _TOKEN.match(t)]


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> RougeScore:
    """ROUGE-N of token lists."""
    hyp_grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
    ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((hyp_grams & ref_grams).values())
    return _score(overlap, hyp_grams.total(), ref_grams.total())


def lcs_table(ref: Sequence[str], hyp: Sequence[str]) -> list[list[int]]:
    """table[i][j] = length of the LCS of ref[:i] and hyp[:j] (dynamic programming)."""
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, 1):
        row, above = table[i], table[i - 1]
        for j, h in enumerate(hyp, 1):
            row[j] = above[j - 1] + 1 if r == h else max(above[j], row[j - 1])
    return table


def lcs_positions(ref: Sequence[str], hyp: Sequence[str]) -> set[int]:
    """Positions in `ref` of one LCS: read back from the table's corner, taking a match when
    the tokens are equal, else stepping left in `hyp` only when that keeps a strictly longer
    LCS (rouge-score's choice among equally long subsequences)."""
    table, positions = lcs_table(ref, hyp), set()
    i, j = len(ref), len(hyp)
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            positions.add(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> RougeScore:
    """ROUGE-L of token lists."""
    if not hyp or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    return _score(lcs_table(ref, hyp)[-1][-1], len(hyp), len(ref))


def rouge_lsum(hyp: Sequence[Sequence[str]], ref: Sequence[Sequence[str]]) -> RougeScore:
    """Summary-level ROUGE-L of token lists per sentence (union LCS, clipped hits)."""
    n_hyp, n_ref = sum(map(len, hyp)), sum(map(len, ref))
    if not n_hyp or not n_ref:
        return RougeScore(0.0, 0.0, 0.0)
    left_hyp = Counter(t for sentence in hyp for t in sentence)
    left_ref = Counter(t for sentence in ref for t in sentence)
    hits = 0
    for sentence in ref:
        union = set().union(*(lcs_positions(sentence, h) for h in hyp))
        for token in (sentence[i] for i in sorted(union)):
            if left_hyp[token] > 0 and left_ref[token] > 0:
                hits += 1
                left_hyp[token] -= 1
                left_ref[token] -= 1
    return _score(hits, n_hyp, n_ref)


def _sentences(text: str, stem: bool) -> list[list[str]]:
    return [tokenize(s, stem) for s in text.split("\n") if s]


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    """`types` as a tuple, each a known ROUGE type."""
    if isinstance(types, str) or not types:
        raise ValueError(f"types must be a non-empty list of ROUGE types such as {TYPES}")
    for name in types:
        if name not in ("rougeL", "rougeLsum") and not _ROUGE_N.match(name):
            raise ValueError(f"unknown ROUGE type {name!r}: expected rouge1..rouge9, rougeL "
                             "or rougeLsum")  # fmt: skip
    return tuple(types)


def _score_pair(hyp: str, ref: str, types: tuple[str, ...], stem: bool) -> dict[str, RougeScore]:
    hyp_tokens, ref_tokens = tokenize(hyp, stem), tokenize(ref, stem)
    scores = {}
    for name in types:
        if name == "rougeL":
            scores[name] = rouge_l(hyp_tokens, ref_tokens)
        elif name == "rougeLsum":
            scores[name] = rouge_lsum(_sentences(hyp, stem), _sentences(ref, stem))
        else:
            scores[name] = rouge_n(hyp_tokens, ref_tokens, int(name[5:]))
    return scores


def rouge_item(
    hyp: str, refs: Sequence[str], types: Sequence[str] = TYPES, stem: bool = False
) -> dict[str, RougeScore]:
    """ROUGE scores of one hypothesis: per type, those of its best reference by F."""
    if isinstance(refs, str) or not refs:
        raise ValueError("refs must be a non-empty list of reference strings")
    types = check_types(types)
    per_ref = [_score_pair(hyp, ref, types, stem) for ref in refs]
    return {name: max((s[name] for s in per_ref), key=lambda s: s.fmeasure) for name in types}


def rouge(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    types: Sequence[str] = TYPES,
    stem: bool = False,
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Mean F-measure (0-1) over items of each ROUGE type; `refs[j][i]` is the j-th
    reference of `hyps[i]` (sacrebleu's layout)."""
    if not hyps:
        raise ValueError("no hypotheses to score")
    pairs = progress_bar(hyps, references_per_segment(hyps, refs), "ROUGE", progress)
    items = [rouge_item(h, r, types, stem) for h, r in pairs]
    return {name: sum(item[name].fmeasure for item in items) / len(items) for name in items[0]}

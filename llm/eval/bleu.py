"""BLEU (Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation",
ACL), computed exactly as sacrebleu 2.x does with its defaults (Post 2018, "A Call for Clarity
in Reporting BLEU Scores", WMT; github.com/mjpost/sacrebleu), so our figures are comparable
with published ones. Tests hold every score equal to sacrebleu's to 1e-6.

For a corpus of hypotheses h_i, each with one or more references r_ij:
  * every segment is tokenised (`tokenize_13a`, mteval-v13a's rules) and split on spaces;
  * m_n = sum_i sum_g min(count_h_i(g), max_j count_r_ij(g)) over the n-grams g of h_i
    (clipped matches), t_n = the number of n-grams of all h_i, for n = 1..4;
  * p_n = m_n / t_n; BLEU = BP * exp(mean_n log p_n), reported in percent;
  * BP = 1 if c >= r else exp(1 - r / c) (0 when c = 0), where c = total hypothesis length and
    r = sum_i of the reference length closest to len(h_i) (the shorter one on a tie).
A corpus with no matching n-gram at all scores 0. Smoothing of a zero m_n (Chen & Cherry
2014, "A Systematic Comparison of Smoothing Techniques for Sentence-Level BLEU", WMT):
  * "exp" (the default; mteval-v13a's): the k-th order with m_n = 0 gets p_n = 1 / (2^k t_n);
  * "floor": p_n = value / t_n (value 0.1); "add-k": m_n + k and t_n + k for n >= 2 (k 1);
  * "none": a zero p_n makes BLEU 0.
Orders with t_n = 0 (hypotheses shorter than n tokens) end the product: without effective
order BLEU is then 0; with it (`effective_order=True`, the sentence-level default) the mean
runs over the orders before the first empty one only.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from tqdm import tqdm

MAX_ORDER = 4  # longest n-gram counted
SMOOTHING = {"exp": None, "floor": 0.1, "add-k": 1.0, "none": None}  # method -> default value
TOKENIZERS = ("13a", "none")

# mteval-v13a's tokeniser after its language-independent part, as regex -> replacement, in
# order: ASCII symbols (not ' - . ,) become tokens; a period or comma becomes a token unless it
# sits between digits (3.14, 1,000); a dash after a digit becomes a token.
_SYMBOLS = re.escape('{|}~[\\]^_`!"#$%&()*+:;<=>?@/')
_RULES_13A = (
    (re.compile(f"([ {_SYMBOLS}])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


@dataclasses.dataclass(frozen=True)
class BleuScore:
    """A BLEU score with its sufficient statistics (the fields of sacrebleu's BLEUScore)."""

    score: float  # BLEU in percent, 0-100
    counts: tuple[int, ...]  # clipped n-gram matches m_n, n = 1..max_order
    totals: tuple[int, ...]  # hypothesis n-grams t_n
    precisions: tuple[float, ...]  # p_n in percent, after smoothing (0 where not computed)
    bp: float  # brevity penalty
    sys_len: int  # c: hypothesis tokens
    ref_len: int  # r: closest-reference tokens

    @property
    def verbose(self) -> str:
        """sacrebleu's one-line detail: precisions, BP, length ratio and lengths."""
        ratio = self.sys_len / self.ref_len if self.ref_len else 0.0
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"{precisions} (BP = {self.bp:.3f} ratio = {ratio:.3f} "
                f"hyp_len = {self.sys_len} ref_len = {self.ref_len})")  # fmt: skip


@lru_cache(maxsize=1 << 16)
def tokenize_13a(line: str) -> str:
    """mteval-v13a's tokenisation (WMT's, sacrebleu's default): drops `<skipped>`, joins lines
    broken after a hyphen, unescapes four HTML entities, then applies `_RULES_13A`."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _RULES_13A:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def references_per_segment(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> list[tuple[str, ...]]:
    """sacrebleu's reference layout, `refs[j][i]` = j-th reference of hypothesis i, checked and
    turned into one tuple of references per hypothesis."""
    if isinstance(hyps, str) or not all(isinstance(h, str) for h in hyps):
        raise ValueError("hypotheses must be a list of strings")
    if not refs or isinstance(refs, str) or any(isinstance(stream, str) for stream in refs):
        raise ValueError("references must be a list of reference streams (lists of strings)")
    for j, stream in enumerate(refs):
        if len(stream) != len(hyps):
            raise ValueError(f"reference stream {j} has {len(stream)} segments "
                             f"but there are {len(hyps)} hypotheses")  # fmt: skip
        if not all(isinstance(r, str) for r in stream):
            raise ValueError(f"reference stream {j} holds a non-string segment")
    return list(zip(*refs, strict=True))


def progress_bar(hyps: Sequence[str], refs: list, desc: str, show: bool):
    """(hypothesis, its references) pairs, with a progress bar on stderr when `show` and the
    work lasts over a second."""
    pairs = zip(hyps, refs, strict=True)
    return tqdm(pairs, desc=desc, total=len(hyps), unit="seg", file=sys.stderr, disable=not show,
                delay=1.0)  # fmt: skip


def ngram_counts(tokens: Sequence[str], max_order: int) -> Counter:
    """Counts of every n-gram (as a tuple of tokens) of `tokens`, n = 1..max_order."""
    return Counter(
        tuple(tokens[i : i + n])
        for n in range(1, max_order + 1)
        for i in range(len(tokens) - n + 1)
    )


def closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length nearest `hyp_len`; on a tie, the shorter reference."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def segment_stats(hyp: list[str], refs: Sequence[list[str]], max_order: int) -> list[int]:
    """[len(hyp), closest ref len, m_1..m_N, t_1..t_N] of one tokenised segment."""
    ref_max = ngram_counts(refs[0], max_order)
    for ref in refs[1:]:  # the clip count of an n-gram: its largest count in any one reference
        ref_max |= ngram_counts(ref, max_order)
    matches, totals = [0] * max_order, [0] * max_order
    for gram, count in ngram_counts(hyp, max_order).items():
        totals[len(gram) - 1] += count
        if gram in ref_max:
            matches[len(gram) - 1] += min(count, ref_max[gram])
    return [len(hyp), closest_ref_len(len(hyp), [len(r) for r in refs]), *matches, *totals]


def bleu_from_stats(
    stats: Sequence[int],
    *,
    max_order: int = MAX_ORDER,
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> BleuScore:
    """BLEU of summed `segment_stats` (the module docstring gives the formula)."""
    check_settings("13a", smooth, max_order)
    value = SMOOTHING[smooth] if smooth_value is None else smooth_value
    sys_len, ref_len = int(stats[0]), int(stats[1])
    counts, totals = list(stats[2 : 2 + max_order]), list(stats[2 + max_order :])
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    precisions = [0.0] * max_order
    result = dict(counts=tuple(counts), totals=tuple(totals), bp=bp, sys_len=sys_len,
                  ref_len=ref_len)  # fmt: skip
    if not any(counts):
        return BleuScore(0.0, precisions=tuple(precisions), **result)
    orders, zeros = max_order, 0
    for n in range(max_order):
        matched, total = counts[n], totals[n]
        if smooth == "add-k" and n > 0:
            matched, total = matched + value, total + value
        if total == 0:
            break
        if effective_order:
            orders = n + 1
        if matched > 0:
            precisions[n] = 100.0 * matched / total
        elif smooth == "exp":
            zeros += 1
            precisions[n] = 100.0 / (2**zeros * total)
        elif smooth == "floor":
            precisions[n] = 100.0 * value / total
    used = precisions[:orders]
    score = bp * math.exp(sum(math.log(p) for p in used) / orders) if all(used) else 0.0
    return BleuScore(score, precisions=tuple(precisions), **result)


def check_settings(tokenize: str, smooth: str, max_order: int) -> None:
    """Refuse an unknown tokeniser or smoothing method, or a max n-gram order below 1."""
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize={tokenize!r} is not one of {TOKENIZERS}")
    if smooth not in SMOOTHING:
        raise ValueError(f"smooth={smooth!r} is not one of {sorted(SMOOTHING)}")
    if max_order < 1:
        raise ValueError(f"{max_order=} must be at least 1")


def _prepare(text: str, lowercase: bool, tokenize: str) -> list[str]:
    """A segment as BLEU counts it: trailing whitespace dropped, optionally lowercased,
    tokenised, split on spaces."""
    text = text.lower() if lowercase else text
    text = text.rstrip()
    return (tokenize_13a(text) if tokenize == "13a" else text).split()


def corpus_bleu(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
    max_order: int = MAX_ORDER,
    progress: bool = False,
) -> BleuScore:
    """Corpus BLEU of `hyps` against reference streams `refs` (`refs[j][i]` is the j-th
    reference of `hyps[i]`), as sacrebleu.corpus_bleu with the same arguments."""
    if not hyps:
        raise ValueError("no hypotheses to score")
    check_settings(tokenize, smooth, max_order)
    total = [0] * (2 + 2 * max_order)
    for hyp, seg_refs in progress_bar(hyps, references_per_segment(hyps, refs), "BLEU", progress):
        ref_tokens = [_prepare(r, lowercase, tokenize) for r in seg_refs]
        seg = segment_stats(_prepare(hyp, lowercase, tokenize), ref_tokens, max_order)
        for k, value in enumerate(seg):
            total[k] += value
    return bleu_from_stats(total, max_order=max_order, smooth=smooth, smooth_value=smooth_value,
                           effective_order=effective_order)  # fmt: skip


def sentence_bleu(
    hyp: str, refs: Sequence[str], *, effective_order: bool = True, **kwargs
) -> BleuScore:
    """BLEU of one hypothesis against its references, as sacrebleu.sentence_bleu (whose
    defaults are those of `corpus_bleu` but with effective order). BLEU is a corpus metric;
    averaging sentence scores gives a different, smaller number."""
    if isinstance(refs, str):
        raise ValueError("refs must be a list of reference strings, not one string")
    streams = [[r] for r in refs]
    return corpus_bleu([hyp], streams, effective_order=effective_order, **kwargs)


def bleu_signature(
    nrefs: int,
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> str:
    """sacrebleu's reproducibility signature of the settings (without its version field)."""
    smoothing = smooth
    if SMOOTHING.get(smooth) is not None:
        smoothing += f"[{SMOOTHING[smooth] if smooth_value is None else smooth_value:.2f}]"
    case = "lc" if lowercase else "mixed"
    eff = "yes" if effective_order else "no"
    return f"nrefs:{nrefs}|case:{case}|eff:{eff}|tok:{tokenize}|smooth:{smoothing}"

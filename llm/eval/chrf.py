"""chrF (Popović 2015, "chrF: character n-gram F-score for automatic MT evaluation", WMT) and
chrF++ (Popović 2017, "chrF++: words helping character n-grams", WMT), computed exactly as
sacrebleu 2.x's CHRF with its defaults (github.com/mjpost/sacrebleu). Tests hold every score
equal to sacrebleu's to 1e-6.

Per segment and n-gram order n (character orders 1..6 on the text with all whitespace
removed; for chrF++ also word orders 1..2 on whitespace words with one leading or trailing
punctuation mark split off), three counts: hypothesis n-grams (counted only when the reference
has n-grams of that order), reference n-grams, and matches sum_g min(count_h(g), count_r(g)).
With several references a segment keeps the counts of the reference whose own chrF is best
(the first on a tie). The corpus counts are the segments' sums; from them, over the orders
where both the hypothesis and the reference counts are positive ("effective order"):
    P = mean_n matches_n / hyp_n,   R = mean_n matches_n / ref_n,
    chrF_beta = 100 * (1 + beta^2) P R / (beta^2 P + R)   (0 when P + R = 0), beta = 2,
so recall weighs beta^2 = 4 times as much as precision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from llm.eval.bleu import progress_bar, references_per_segment

CHAR_ORDER = 6  # longest character n-gram
WORD_ORDER = 0  # longest word n-gram: 0 is chrF, 2 is chrF++
BETA = 2  # recall is beta^2 times as important as precision
PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")  # split off words for chrF++


def char_ngrams(text: str, order: int, whitespace: bool = False) -> list[Counter]:
    """Counts of character n-grams, n = 1..order, of `text` (whitespace removed unless
    `whitespace`)."""
    if not whitespace:
        text = "".join(text.split())
    return [Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, order + 1)]


def split_punctuation(text: str) -> list[str]:
    """chrF++'s words: whitespace tokens, each longer than one character with a trailing
    punctuation mark, or else a leading one, split off ("(hi)" -> "(hi", ")")."""
    words = []
    for word in text.split():
        if len(word) > 1 and word[-1] in PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def word_ngrams(text: str, order: int) -> list[Counter]:
    """Counts of word n-grams, n = 1..order, of `split_punctuation(text)`."""
    words = split_punctuation(text)
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            for n in range(1, order + 1)]  # fmt: skip


def match_stats(hyp: Sequence[Counter], ref: Sequence[Counter]) -> list[int]:
    """[hyp_n, ref_n, matches_n] for each order n, flattened."""
    stats = []
    for hyp_n, ref_n in zip(hyp, ref, strict=True):
        matches = sum(min(count, ref_n[gram]) for gram, count in hyp_n.items() if gram in ref_n)
        stats += [hyp_n.total() if ref_n else 0, ref_n.total(), matches]
    return stats


def chrf_from_stats(stats: Sequence[int], beta: float = BETA) -> float:
    """chrF (0-100) of summed `match_stats` (the module docstring gives the formula)."""
    precisions, recalls = [], []
    for n in range(0, len(stats), 3):
        hyp_n, ref_n, matches = stats[n : n + 3]
        if hyp_n > 0 and ref_n > 0:
            precisions.append(matches / hyp_n)
            recalls.append(matches / ref_n)
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def _ngrams(text: str, char_order: int, word_order: int, whitespace: bool) -> list[Counter]:
    return char_ngrams(text, char_order, whitespace) + word_ngrams(text, word_order)


def corpus_chrf(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    *,
    char_order: int = CHAR_ORDER,
    word_order: int = WORD_ORDER,
    beta: float = BETA,
    lowercase: bool = False,
    whitespace: bool = False,
    progress: bool = False,
) -> float:
    """Corpus chrF (0-100) of `hyps` against reference streams `refs` (`refs[j][i]` is the
    j-th reference of `hyps[i]`), as sacrebleu.corpus_chrf; `word_order=2` gives chrF++."""
    if not hyps:
        raise ValueError("no hypotheses to score")
    total = [0] * (3 * (char_order + word_order))
    for hyp, seg_refs in progress_bar(hyps, references_per_segment(hyps, refs), "chrF", progress):
        if lowercase:
            hyp, seg_refs = hyp.lower(), [r.lower() for r in seg_refs]
        hyp_grams = _ngrams(hyp, char_order, word_order, whitespace)
        best, best_f = None, -1.0
        for ref in seg_refs:  # the reference with the best segment chrF, the first on a tie
            stats = match_stats(hyp_grams, _ngrams(ref, char_order, word_order, whitespace))
            if (f := chrf_from_stats(stats, beta)) > best_f:
                best, best_f = stats, f
        total = [a + b for a, b in zip(total, best, strict=True)]
    return chrf_from_stats(total, beta)


def sentence_chrf(hyp: str, refs: Sequence[str], **kwargs) -> float:
    """chrF (0-100) of one hypothesis against its references, as sacrebleu.sentence_chrf."""
    if isinstance(refs, str):
        raise ValueError("refs must be a list of reference strings, not one string")
    return corpus_chrf([hyp], [[r] for r in refs], **kwargs)


def chrf_name(beta: float = BETA, word_order: int = WORD_ORDER) -> str:
    """sacrebleu's name of the variant: chrF2, chrF2++ (one "+" per word order)."""
    return f"chrF{beta:g}" + "+" * word_order


def chrf_signature(
    nrefs: int,
    *,
    char_order: int = CHAR_ORDER,
    word_order: int = WORD_ORDER,
    lowercase: bool = False,
    whitespace: bool = False,
) -> str:
    """sacrebleu's reproducibility signature of the settings (without its version field)."""
    case = "lc" if lowercase else "mixed"
    space = "yes" if whitespace else "no"
    return f"nrefs:{nrefs}|case:{case}|eff:yes|nc:{char_order}|nw:{word_order}|space:{space}"

"""`llm score bleu|chrf|rouge|em|f1 --hyp FILE --ref FILE [--ref FILE ...]`: a text metric of
segment files, printed as JSON.

Like sacrebleu's command line: every file holds one segment per line (UTF-8, the final newline
optional), line i of each --ref file is a reference of line i of --hyp, and all files must
have the same number of lines. The JSON gives the metric's name, its score and sacrebleu's
style of signature (the settings that reproduce it), e.g.
    {"name": "BLEU", "score": 23.4, "signature": "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp"}
Scales: BLEU and chrF 0-100 (sacrebleu's), ROUGE 0-1 (rouge-score's), em and f1 0-100 (the
SQuAD script's). The definitions are in llm/eval/{bleu,chrf,rouge,overlap}.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.cli_args import int_at_least

METRICS = ("bleu", "chrf", "rouge", "em", "f1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score", help="BLEU, chrF, ROUGE, exact match or token F1 of segment files, as JSON"
    )
    parser.add_argument("metric", choices=METRICS, help="the metric to compute")
    parser.add_argument("--hyp", required=True, metavar="FILE", help="hypotheses, one per line")
    parser.add_argument("--ref", required=True, action="append", metavar="FILE",
                        help="references, one per line; repeat for several references")  # fmt: skip
    parser.add_argument("--lowercase", action="store_true", help="bleu, chrf: ignore case")
    parser.add_argument("--tokenize", choices=("13a", "none"), default="13a",
                        help="bleu: the tokeniser (default 13a, sacrebleu's)")  # fmt: skip
    parser.add_argument("--word-order", type=int_at_least(0), default=0,
                        help="chrf: word n-gram order (2 gives chrF++)")  # fmt: skip
    parser.add_argument("--stem", action="store_true", help="rouge: Porter-stem the tokens")
    parser.add_argument("--types", default="rouge1,rouge2,rougeL,rougeLsum",
                        help="rouge: comma-separated ROUGE types")  # fmt: skip
    parser.add_argument("--newline", metavar="TOKEN",
                        help="rouge: TOKEN in a line marks a sentence break (e.g. '<n>'), "
                        "for rougeLsum")  # fmt: skip
    parser.set_defaults(func=run)


def read_segments(path: str) -> list[str]:
    """The lines of a UTF-8 segment file, without their newlines (a final one is optional)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start})") from None
    if not text:
        return []
    return text.removesuffix("\n").split("\n")


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


def load(hyp_path: str, ref_paths: list[str]) -> tuple[list[str], list[list[str]]]:
    """Hypotheses and reference streams, checked to be non-empty and of one length."""
    hyps = read_segments(hyp_path)
    if not hyps:
        raise ValueError(f"{hyp_path}: no lines to score")
    refs = [read_segments(path) for path in ref_paths]
    for path, stream in zip(ref_paths, refs, strict=True):
        if len(stream) != len(hyps):
            counts = f"{path} has {_lines(len(stream))} but {hyp_path} has {_lines(len(hyps))}"
            raise ValueError(f"{counts}; each reference file needs one line per hypothesis")
    return hyps, refs


def bleu_result(args: argparse.Namespace, hyps: list[str], refs: list[list[str]]) -> dict:
    from llm.eval.bleu import bleu_signature, corpus_bleu

    result = corpus_bleu(
        hyps, refs, lowercase=args.lowercase, tokenize=args.tokenize, progress=True
    )
    signature = bleu_signature(len(refs), lowercase=args.lowercase, tokenize=args.tokenize)
    return {"name": "BLEU", "score": result.score, "signature": signature,
            "verbose_score": result.verbose, "counts": list(result.counts),
            "totals": list(result.totals), "precisions": list(result.precisions),
            "bp": result.bp, "sys_len": result.sys_len, "ref_len": result.ref_len}  # fmt: skip


def chrf_result(args: argparse.Namespace, hyps: list[str], refs: list[list[str]]) -> dict:
    from llm.eval.chrf import chrf_name, chrf_signature, corpus_chrf

    score = corpus_chrf(
        hyps, refs, word_order=args.word_order, lowercase=args.lowercase, progress=True
    )
    signature = chrf_signature(len(refs), word_order=args.word_order, lowercase=args.lowercase)
    return {"name": chrf_name(word_order=args.word_order), "score": score, "signature": signature}


def rouge_result(args: argparse.Namespace, hyps: list[str], refs: list[list[str]]) -> dict:
    from llm.eval.rouge import check_types, rouge

    types = check_types([t.strip() for t in args.types.split(",") if t.strip()])
    if args.newline:
        hyps = [h.replace(args.newline, "\n") for h in hyps]
        refs = [[r.replace(args.newline, "\n") for r in stream] for stream in refs]
    scores = rouge(hyps, refs, types, stem=args.stem, progress=True)
    stem = "yes" if args.stem else "no"
    signature = f"nrefs:{len(refs)}|stem:{stem}|types:{','.join(types)}|agg:mean-f"
    return {"name": "ROUGE", "score": scores[types[0]], **scores, "signature": signature}


def overlap_result(args: argparse.Namespace, hyps: list[str], refs: list[list[str]]) -> dict:
    from llm.eval.overlap import exact_match, token_f1

    metric = exact_match if args.metric == "em" else token_f1
    per_item = [metric(h, list(r)) for h, r in zip(hyps, zip(*refs, strict=True), strict=True)]
    name = "EM" if args.metric == "em" else "F1"
    signature = f"nrefs:{len(refs)}|norm:squad|agg:mean-max"
    return {"name": name, "score": 100 * sum(per_item) / len(per_item), "signature": signature}


# Options each metric reads, with their defaults: any other option given is refused.
OPTIONS = {"lowercase": False, "tokenize": "13a", "word_order": 0, "stem": False,
           "types": "rouge1,rouge2,rougeL,rougeLsum", "newline": None}  # fmt: skip
USES = {"bleu": {"lowercase", "tokenize"}, "chrf": {"lowercase", "word_order"},
        "rouge": {"stem", "types", "newline"}, "em": set(), "f1": set()}  # fmt: skip
RESULTS = {"bleu": bleu_result, "chrf": chrf_result, "rouge": rouge_result,
           "em": overlap_result, "f1": overlap_result}  # fmt: skip


def check_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen metric would ignore (a silent no-op misleads)."""
    for name, default in OPTIONS.items():
        if getattr(args, name) != default and name not in USES[args.metric]:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply to {args.metric}; it applies to "
                             f"{', '.join(m for m in METRICS if name in USES[m])}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    check_options(args)
    hyps, refs = load(args.hyp, args.ref)
    result = RESULTS[args.metric](args, hyps, refs)
    result["n"] = len(hyps)
    print(json.dumps(result, ensure_ascii=False))
    return 0

"""Generation tasks: greedy answers to prompts, scored against reference answers.

Each record `{"id", "prompt", "references": [str, ...], "until": [str]?}` is answered greedily
(`Scorer.generate_until`: the text ends before the first stop string of "until", default
["\\n\\n"], or at EOS, or after max_new_tokens) and scored:

  * exact_match, f1: SQuAD's normalised exact match and bag-of-tokens F1 (Rajpurkar et al. 2016),
    the maximum over the item's references (`llm.eval.overlap`);
  * rougeL: ROUGE-L F-measure (Lin 2004), max over references (`llm.eval.rouge`, parity with
    Google's rouge-score);
  * bleu, chrf: corpus-level BLEU (Papineni et al. 2002) and chrF (Popović 2015) over all
    items, sacrebleu's definitions and default tokenisation (`llm.eval.bleu`, `llm.eval.chrf`).
    Items with fewer references than the most have their first reference repeated to fill
    sacrebleu's reference streams; a repeated reference changes neither BLEU's clipped counts
    and closest length nor chrF's best-reference choice.

exact_match, f1 and rougeL are per-item values (intervals and paired tests apply); BLEU and
chrF are corpus statistics, reported without an interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm.data.sources import SourceError, jsonl_records
from llm.eval.bleu import corpus_bleu
from llm.eval.chrf import corpus_chrf
from llm.eval.overlap import exact_match, token_f1
from llm.eval.rouge import rouge_item

DEFAULT_UNTIL = ("\n\n",)  # stop strings when a record gives none


@dataclasses.dataclass(frozen=True)
class GenItem:
    """One prompt with its reference answers."""

    id: str
    prompt: str
    references: tuple[str, ...]
    until: tuple[str, ...]
    where: str  # "file:line"


def read_items(path: str) -> list[GenItem]:
    """The records of a gen task JSONL; a malformed one raises SourceError naming file:line."""
    items, seen = [], {}
    for record, where in jsonl_records(path, "generation"):
        item = _item(record, where)
        if item.id in seen:
            raise SourceError(f"{where}: id {item.id!r} already used at {seen[item.id]}")
        seen[item.id] = where
        items.append(item)
    return items


def _item(record: Any, where: str) -> GenItem:
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", "prompt", "references"):
        if key not in record:
            raise SourceError(f"{where}: record is missing key {key!r} (keys: {sorted(record)})")
    for key in ("id", "prompt"):
        if not isinstance(record[key], str):
            raise SourceError(f"{where}: {key!r} is {type(record[key]).__name__}, not a string")
    refs, until = record["references"], record.get("until", list(DEFAULT_UNTIL))
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise SourceError(f"{where}: 'references' must be a non-empty list of strings")
    if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
        raise SourceError(f"{where}: 'until' must be a list of non-empty strings")
    return GenItem(record["id"], record["prompt"], tuple(refs), tuple(until), where)


def reference_streams(items: Sequence[GenItem]) -> list[list[str]]:
    """sacrebleu's layout refs[j][i], short lists filled with their first reference."""
    width = max(len(item.references) for item in items)
    return [
        [item.references[j] if j < len(item.references) else item.references[0] for item in items]
        for j in range(width)
    ]


def score(items: Sequence[GenItem], answers: Sequence[str]) -> tuple[dict, dict]:
    """(per-item values {"exact_match", "f1", "rougeL"}, corpus values {"bleu", "chrf"})."""
    per_item = {"exact_match": [], "f1": [], "rougeL": []}
    for item, answer in zip(items, answers, strict=True):
        refs = list(item.references)
        per_item["exact_match"].append(float(exact_match(answer, refs)))
        per_item["f1"].append(float(token_f1(answer, refs)))
        per_item["rougeL"].append(rouge_item(answer, refs, types=("rougeL",))["rougeL"].fmeasure)
    streams = reference_streams(items)
    corpus = {
        "bleu": float(corpus_bleu(list(answers), streams).score),
        "chrf": float(corpus_chrf(list(answers), streams)),
    }
    return {k: np.array(v) for k, v in per_item.items()}, corpus


def generate(
    scorer: Any, items: Sequence[GenItem], *, max_new_tokens: int, progress: bool = False
) -> list[str]:
    """Greedy answers of every item (`Scorer.generate_until`)."""
    requests = [(item.prompt, list(item.until), max_new_tokens) for item in items]
    return scorer.generate_until(requests, progress=progress)

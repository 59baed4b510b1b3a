"""Multiple choice by log-likelihood: acc and acc_norm as lm-evaluation-harness defines them.

Each item is a query and C choices; the model scores every choice as the continuation
`target_delimiter + choice` of the query's context (`Scorer.loglikelihood`, the harness's
`multiple_choice` output type, target_delimiter " "), and picks the choice it finds most
probable. With ll_c the summed log-probability of choice c's continuation tokens:

    acc      = [argmax_c ll_c == gold]
    acc_norm = [argmax_c ll_c / len(choice_c) == gold]      (characters of the choice string,
                                                             the delimiter not counted)

both from `ConfigurableTask.process_results` in lm_eval/api/task.py (lm-eval 0.4.x:
`completion_len = [len(i) for i in choices]`, `pred_norm = argmax(lls / completion_len)`; the
normalisation of Gao et al., "A framework for few-shot language model evaluation", 2021).
numpy's argmax takes the first of tied maxima, as the harness does. `probs` is the softmax of
the lls over the choices (the harness's `prob_norm`), whose top value is the confidence that
calibration (ECE) bins.

k-shot contexts (the harness's default layout): k examples, each `query + " " + choices[gold]`,
then the item's query, joined by "\n\n". The shots of an item are drawn without replacement
by a generator seeded with (seed, CRC-32 of the item's id), from the few-shot pool (a separate
file) or else from the task's own items, never the item itself; so an item's context is the
same in every run, whatever `--limit` or the order of the other items.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.sources import SourceError, jsonl_records

TARGET_DELIMITER = " "  # between a context and the choice it continues with (the harness's)
FEWSHOT_DELIMITER = "\n\n"  # between shots, and between the last shot and the query


@dataclasses.dataclass(frozen=True)
class MCItem:
    """One multiple-choice question of a task file."""

    id: str
    query: str  # the full zero-shot context, e.g. ending "Answer:"
    choices: tuple[str, ...]  # the answers, scored as TARGET_DELIMITER + choice
    gold: int  # index of the correct choice
    domain: str | None  # optional breakdown key
    where: str  # "file:line"


@dataclasses.dataclass(frozen=True)
class MCScores:
    """Per-item outcomes of a multiple-choice evaluation, in item order."""

    acc: np.ndarray  # [N] 1.0 when argmax of ll is gold
    acc_norm: np.ndarray  # [N] 1.0 when argmax of ll / len(choice) is gold
    pred: np.ndarray  # [N] int, argmax of ll
    probs: list[np.ndarray]  # N arrays [C_i]: softmax of ll over the item's choices
    lls: list[np.ndarray]  # N arrays [C_i]: summed log-likelihood of each choice (nats)


def read_items(path: str | Path) -> list[MCItem]:
    """The MC records of a JSONL file; a malformed one raises SourceError naming file:line."""
    items = [_item(record, where) for record, where in jsonl_records(str(path), "multiple-choice")]
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise SourceError(f"{item.where}: id {item.id!r} already used at {seen[item.id]}")
        seen[item.id] = item.where
    return items


def _item(record: Any, where: str) -> MCItem:
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in (("id", str), ("query", str), ("choices", list), ("gold", int)):
        if key not in record:
            raise SourceError(f"{where}: record is missing key {key!r} (keys: {sorted(record)})")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            got = type(record[key]).__name__
            raise SourceError(f"{where}: {key!r} is {got}, not {kind.__name__}")
    choices = record["choices"]
    if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise SourceError(f"{where}: 'choices' must be two or more non-empty strings")
    if not 0 <= record["gold"] < len(choices):
        raise SourceError(f"{where}: 'gold' {record['gold']} is not an index of the choices")
    domain = record.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise SourceError(f"{where}: 'domain' is {type(domain).__name__}, not a string")
    return MCItem(record["id"], record["query"], tuple(choices), record["gold"], domain, where)


def draw_shots(item: MCItem, pool: Sequence[MCItem], k: int, seed: int) -> list[MCItem]:
    """k items of `pool` other than `item` (by id), drawn without replacement, seeded by
    (seed, CRC-32 of item.id); in the order drawn."""
    if k == 0:
        return []
    others = [p for p in pool if p.id != item.id]
    if k > len(others):
        raise ValueError(f"{item.where}: {k} shots asked for, but the pool has {len(others)}")
    rng = np.random.default_rng([seed, zlib.crc32(item.id.encode("utf-8"))])
    return [others[i] for i in rng.choice(len(others), size=k, replace=False)]


def context(item: MCItem, shots: Sequence[MCItem]) -> str:
    """The prompt the choices continue: the shots answered, then the item's query."""
    answered = [s.query + TARGET_DELIMITER + s.choices[s.gold] for s in shots]
    return FEWSHOT_DELIMITER.join([*answered, item.query])


def requests(items: Sequence[MCItem], contexts: Sequence[str]) -> list[tuple[str, str]]:
    """(context, TARGET_DELIMITER + choice) for every choice of every item, flattened."""
    return [
        (ctx, TARGET_DELIMITER + choice)
        for item, ctx in zip(items, contexts, strict=True)
        for choice in item.choices
    ]


def score(items: Sequence[MCItem], flat_lls: Sequence[float]) -> MCScores:
    """acc, acc_norm, prediction and choice probabilities from the flattened choice lls."""
    sizes = [len(item.choices) for item in items]
    if sum(sizes) != len(flat_lls):
        raise ValueError(f"{len(flat_lls)} log-likelihoods for {sum(sizes)} choices")
    bounds = np.cumsum([0, *sizes])
    lls = [np.asarray(flat_lls[a:b], np.float64) for a, b in itertools.pairwise(bounds)]
    acc, acc_norm, pred, probs = [], [], [], []
    for item, ll in zip(items, lls, strict=True):
        lengths = np.array([len(c) for c in item.choices], np.float64)
        pred.append(int(np.argmax(ll)))
        acc.append(float(pred[-1] == item.gold))
        acc_norm.append(float(int(np.argmax(ll / lengths)) == item.gold))
        e = np.exp(ll - ll.max())
        probs.append(e / e.sum())
    return MCScores(np.array(acc), np.array(acc_norm), np.array(pred), probs, lls)


def evaluate(
    scorer: Any,
    items: Sequence[MCItem],
    *,
    pool: Sequence[MCItem] | None = None,
    shots: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> MCScores:
    """Scores of `items` under `scorer` (`llm.eval.likelihood.Scorer`) with k-shot contexts
    drawn from `pool` (default: the items themselves)."""
    pool = items if pool is None else pool
    contexts = [context(item, draw_shots(item, pool, shots, seed)) for item in items]
    results = scorer.loglikelihood(requests(items, contexts), progress=progress)
    return score(items, [r.logprob for r in results])

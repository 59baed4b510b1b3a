"""Train-test contamination: how much of each task item's text is found in a training corpus.

Definition (computed by llm/data/ngram_overlap.py). An item's n-grams are its word n-grams as
llm/data/dedup.py `shingles` makes them: lower-cased `\\w+` runs (Unicode letters, digits and
underscores; punctuation, whitespace and line breaks ignored), so "Good my lord," and "good my
LORD" are the same words. The item's overlap is the fraction of its distinct n-grams that occur
in some training document (n-grams never span two documents); the item is flagged when that
fraction is >= `threshold` and at least one n-gram is found. An item of fewer than n words is
one n-gram of all its words (dedup's rule), found when the corpus holds those words in a row;
`short` marks such items in the report. An item with no word is not scored, listed as `empty`.

Source: Brown et al. 2020, "Language Models are Few-Shot Learners", appendix C, measure 13-gram
collisions between benchmark items and the training set and call an item dirty on any
collision: `threshold=0` is that rule; the default 0.5 asks for half of the item's n-grams.

Memory: the items' n-grams are held in sets (one per n-gram length in use); the corpus is
streamed a document at a time, each in pieces (dedup `shingle_batches`), so `contamination`
never holds a corpus whole (the command's corpus reader, llm.data.corpus, does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llm.data.corpus import prepare_documents, split_documents
from llm.data.ngram_overlap import ngram_overlap
from llm.data.sources import SourceError, jsonl_records

TEXT_FIELDS = ("text", "query", "prompt")  # the item text of a task record, first present


@dataclasses.dataclass(frozen=True)
class ItemOverlap:
    id: str
    ngrams: int  # distinct n-grams of the item
    found: int  # of them, found in the corpus
    short: bool  # fewer than n words: one n-gram of all its words

    @property
    def fraction(self) -> float:
        return self.found / self.ngrams


@dataclasses.dataclass(frozen=True)
class Report:
    n: int
    threshold: float
    items: tuple[ItemOverlap, ...]  # scored items, in input order
    empty: tuple[str, ...]  # ids of items without a word (not scored)
    corpus_docs: int
    corpus_words: int

    @property
    def fractions(self) -> np.ndarray:
        return np.array([i.fraction for i in self.items], dtype=np.float64)

    @property
    def flagged(self) -> list[str]:
        return [i.id for i in self.items if i.found and i.fraction >= self.threshold]

    def summary(self) -> dict:
        return {
            "items": len(self.items) + len(self.empty),
            "scored": len(self.items),
            "short_items": sum(i.short for i in self.items),
            "empty": list(self.empty),
            "mean_fraction": float(self.fractions.mean()) if self.items else 0.0,
            "flagged": len(self.flagged),
            "flagged_ids": self.flagged,
            "per_item": {"id": [i.id for i in self.items],
                         "fraction": [round(i.fraction, 6) for i in self.items]},
        }  # fmt: skip


def contamination(items: Sequence[str], corpus_texts: Iterable[str], n: int = 13,
                  threshold: float = 0.5, ids: Sequence[str] | None = None,
                  progress: bool = False) -> Report:  # fmt: skip
    """The overlap of each item with the corpus (module docstring): one pass over the corpus."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"contamination: threshold={threshold} must be in [0, 1]")
    ids = [str(i) for i in range(len(items))] if ids is None else list(ids)
    if len(ids) != len(items):
        raise ValueError(f"contamination: {len(ids)} ids for {len(items)} items")
    scan = ngram_overlap(items, _progress(corpus_texts, progress), n)
    scored = [ItemOverlap(i, o.ngrams, o.found, o.words < n)
              for i, o in zip(ids, scan.items, strict=True) if o.words]  # fmt: skip
    empty = tuple(i for i, o in zip(ids, scan.items, strict=True) if not o.words)
    return Report(n, threshold, tuple(scored), empty, scan.docs, scan.words)


def _progress(texts: Iterable[str], on: bool) -> Iterable[str]:
    if not on:
        return texts
    from tqdm import tqdm

    return tqdm(texts, unit="doc", file=sys.stderr, desc="corpus")


# ------------------------------------------------------------------------------- command


def task_files(spec: str) -> dict[str, Path]:
    """{task name: JSONL}: a file (named by its folder when it is `test.jsonl`), or a folder's
    `<task>/test.jsonl` files (what `llm data mc-tasks` writes), else its `*.jsonl` files."""
    path = Path(spec)
    if path.is_file():
        return {path.parent.name if path.name == "test.jsonl" else path.stem: path}
    if not path.is_dir():
        raise SourceError(f"--tasks {spec}: no such file or folder")
    files = sorted(path.glob("*/test.jsonl"))
    if files:
        return {f.parent.name: f for f in files}
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise SourceError(f"--tasks {spec}: no <task>/test.jsonl and no *.jsonl in the folder")
    return {f.stem: f for f in files}


def task_items(path: Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a task file: each record's first field of TEXT_FIELDS; the id is its
    "id" field or else its file:line."""
    ids, texts = [], []
    for record, where in jsonl_records(str(path), "task"):
        if not isinstance(record, dict):
            raise SourceError(f"{where}: expected a JSON object")
        field = next((f for f in TEXT_FIELDS if f in record), None)
        if field is None or not isinstance(record[field], str):
            raise SourceError(f"{where}: no string field among {TEXT_FIELDS}")
        ids.append(str(record.get("id", where)))
        texts.append(record[field])
    return ids, texts


def corpus_texts(data_cfg, spec: str, split: str) -> list[str]:
    """Texts of a corpus's documents as training prepares them (llm.data.corpus: cleaning,
    dedup, then the split by data.val_fraction and data.seed); `all` is every document."""
    docs, _ = prepare_documents(data_cfg, spec)
    if split != "all":
        docs = split_documents(docs, data_cfg.val_fraction, data_cfg.seed)[split]
    return [d.text for d in docs]


def format_table(results: dict) -> str:
    lines = [f"{'task':<20} {'items':>6} {'short':>6} {'mean overlap':>13} {'flagged':>8}"]
    for name, r in results["tasks"].items():
        share = r["flagged"] / max(r["scored"], 1)
        lines.append(f"{name:<20} {r['items']:>6} {r['short_items']:>6} "
                     f"{r['mean_fraction']:>13.4f} {r['flagged']:>8} ({share:.1%})")  # fmt: skip
    return "\n".join(lines)


def _part(report: Report, owner: list[tuple[str, str]], task: str) -> Report:
    """The items of one task, under their own ids (the report's ids are input positions)."""
    mine = [dataclasses.replace(i, id=owner[int(i.id)][1])
            for i in report.items if owner[int(i.id)][0] == task]  # fmt: skip
    empty = [owner[int(i)][1] for i in report.empty if owner[int(i)][0] == task]
    return dataclasses.replace(report, items=tuple(mine), empty=tuple(empty))


def run_command(args: argparse.Namespace, cfg) -> int:
    """`llm data contamination`: one pass over the corpus for the items of every task."""
    if args.n < 1 or not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--n {args.n} must be >= 1 and --threshold {args.threshold} in [0, 1]")
    spec = args.corpus or cfg.data.corpus
    files = task_files(args.tasks)
    loaded = {name: task_items(path) for name, path in files.items()}
    owner = [(name, i) for name, (task_ids, _) in loaded.items() for i in task_ids]
    texts = [t for _, task_texts in loaded.values() for t in task_texts]
    report = contamination(texts, corpus_texts(cfg.data, spec, args.split), args.n,
                           args.threshold, ids=None, progress=True)  # fmt: skip
    results: dict = {"corpus": spec, "split": args.split, "n": args.n,
                     "threshold": args.threshold, "corpus_docs": report.corpus_docs,
                     "corpus_words": report.corpus_words, "tasks": {}}  # fmt: skip
    for name in loaded:
        results["tasks"][name] = {"file": str(files[name])} | _part(report, owner, name).summary()
    print(
        f"corpus {spec} ({args.split}): {report.corpus_docs} documents, "
        f"{report.corpus_words:,} words; {args.n}-grams, flagged at >= {args.threshold}"
    )
    print(format_table(results))
    base = Path(args.tasks) if Path(args.tasks).is_dir() else Path(args.tasks).parent
    name = Path(spec).stem
    out = Path(args.out or base / f"contamination-{name}-{args.split}-n{args.n}.json")
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0

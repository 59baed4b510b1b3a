"""From a corpus name or path to clean, deduplicated train / validation documents.

    read -> clean -> quality filters -> exact dedup -> near dedup -> split by document

Every stage records what it removed in a `CorpusReport` (printed by `llm data report`).
Deduplication runs before the split so that no document can leak from train into validation.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from llm.config import DataConfig
from llm.data.cleaning import clean_text, quality_problem
from llm.data.corpora import BUILTIN, prepare_builtin
from llm.data.dedup import exact_duplicates, near_duplicates
from llm.data.sources import Document, LoadStats, SourceError, read_documents


@dataclasses.dataclass
class Stage:
    """One stage of preparation: how many documents and characters it removed, and why."""

    name: str
    docs_removed: int = 0
    chars_removed: int = 0
    details: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CorpusReport:
    source: str
    docs_read: int = 0
    chars_read: int = 0
    docs_kept: int = 0
    chars_kept: int = 0
    stages: list[Stage] = dataclasses.field(default_factory=list)
    splits: dict[str, int] = dataclasses.field(default_factory=dict)  # split -> documents

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusReport:
        stages = [Stage(**s) for s in data["stages"]]
        return cls(**{**data, "stages": stages})

    def format(self) -> str:
        lines = [
            f"corpus {self.source}: read {self.docs_read} documents, {self.chars_read:,} chars",
            f"{'stage':<16}{'docs removed':>14}{'chars removed':>16}  details",
        ]
        for s in self.stages:
            details = ", ".join(f"{k}: {v}" for k, v in s.details.items() if v) or "-"
            lines.append(f"{s.name:<16}{s.docs_removed:>14}{s.chars_removed:>16,}  {details}")
        lines.append(
            f"kept {self.docs_kept} documents, {self.chars_kept:,} chars; splits {self.splits}"
        )
        return "\n".join(lines)


def read_corpus(cfg: DataConfig, spec: str, stats: LoadStats) -> list[Document]:
    """Raw documents of a built-in corpus (prepared on first use) or of user files."""
    if spec in BUILTIN:
        path = prepare_builtin(spec, cfg.cache_dir)
        return read_documents(str(path), fmt="jsonl", text_field="text", stats=stats)
    return read_documents(
        spec,
        fmt=cfg.format,
        text_field=cfg.text_field,
        separator=cfg.txt_separator,
        errors=cfg.encoding_errors,
        hf_split=cfg.hf_split,
        stats=stats,
    )


def prepare_documents(cfg: DataConfig, spec: str) -> tuple[list[Document], CorpusReport]:
    """Read, clean, filter and deduplicate; returns the kept documents and the report."""
    stats = LoadStats()
    docs = read_corpus(cfg, spec, stats)
    skipped = sum(stats.skipped.values())
    report = CorpusReport(source=spec, docs_read=len(docs) + skipped)
    report.chars_read = sum(len(d.text) for d in docs)
    details = dict(stats.skipped) | {"invalid UTF-8 replaced": stats.replaced_utf8}
    report.stages.append(Stage("read", skipped, 0, details))

    counts: collections.Counter = collections.Counter()
    cleaned = [Document(clean_text(d.text, cfg.normalize, counts), d.origin) for d in docs]
    chars = sum(len(d.text) for d in cleaned)
    report.stages.append(Stage("clean", 0, report.chars_read - chars, dict(counts)))

    reasons = [
        quality_problem(d.text, cfg.min_chars, cfg.max_symbol_ratio, cfg.max_dup_line_ratio)
        for d in cleaned
    ]
    dropped = [i for i, r in enumerate(reasons) if r]
    report.stages.append(_removal("quality", cleaned, dropped, [reasons[i] for i in dropped]))
    docs = _without(cleaned, dropped)

    if cfg.dedup_exact:
        dropped = exact_duplicates([d.text for d in docs])
        report.stages.append(_removal("exact dedup", docs, dropped))
        docs = _without(docs, dropped)
    if cfg.near_dup_threshold is not None and docs:
        texts = [d.text for d in docs]
        dropped = near_duplicates(
            texts, cfg.near_dup_threshold, cfg.minhash_perms, cfg.minhash_bands, cfg.shingle_words
        )
        report.stages.append(_removal("near dedup", docs, dropped))
        docs = _without(docs, dropped)
    report.docs_kept = len(docs)
    report.chars_kept = sum(len(d.text) for d in docs)
    if not docs:
        raise SourceError(
            f"{spec}: empty corpus after cleaning: every document was removed "
            f"(see the thresholds in data.*)\n{report.format()}"
        )
    return docs, report


def split_documents(
    docs: list[Document], val_fraction: float, seed: int
) -> dict[str, list[Document]]:
    """Deterministic split by document: a seeded permutation, the first ones for validation.

    At least one validation document whenever val_fraction > 0 and there are two or more.
    """
    n_val = int(np.ceil(val_fraction * len(docs))) if val_fraction > 0 else 0
    n_val = min(n_val, len(docs) - 1)
    order = np.random.default_rng(seed).permutation(len(docs))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return {"train": [docs[i] for i in train], "validation": [docs[i] for i in val]}


def _removal(name: str, docs: list[Document], dropped: list[int], reasons=None) -> Stage:
    details = dict(collections.Counter(reasons)) if reasons else {}
    chars = sum(len(docs[i].text) for i in dropped)
    return Stage(name, len(dropped), chars, details)


def _without(docs: list[Document], dropped: list[int]) -> list[Document]:
    drop = set(dropped)
    return [d for i, d in enumerate(docs) if i not in drop]

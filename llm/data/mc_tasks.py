"""Multiple-choice tasks built offline from our corpora: which play, which book, which fortune.

    llm data mc-tasks --out /tmp/mc_tasks --seed 0 --tasks which_play,which_book,which_fortune

writes `<out>/<task>/{test,fewshot}.jsonl` and `<out>/manifest.json`. Records follow the
multiple-choice contract of llm/eval/multiple_choice.py: `{"id", "query", "choices", "gold",
"domain", "text"}`, where `query` ends "Answer:" (the choice is scored as " " + choice),
`domain` is the gold label and `text` is the quoted passage alone (what the contamination check
of llm/eval/contamination.py compares with training text; readers ignore it). The id is the
passage's place in its source ("hamlet/3:12.0", "Genesis 1:3", "art#17"), unique across files.

* which_play: up to PASSAGE_LINES consecutive lines of one speech -> the play (llm/data/plays.py).
  Split `default-run` (the default): test passages come from the plays that the default
  training run holds out (the validation documents of `configs/default.yaml`'s data config:
  corpus shakespeare, a document is a whole play or poem, llm/data/corpus.py), the few-shot
  pool from the plays it trains on; so the test text is unseen by that run, but only its
  held-out plays (3 of 37 with the defaults) are golds. Split `scenes`: the held-out sections
  of `llm data tasks` (10% of every play's acts or scenes, llm/data/tasks.py), so every play is
  a gold; that text is held out from the tasks' training split, not from the default run.
* which_book: a KJV verse -> its book (llm/data/kjv.py); chapters held out as in tasks.py.
* which_fortune: a saying -> its category of the Debian `fortunes` collection
  (llm/data/fortunes.py); 10% of each category's sayings held out.

Neither the Bible nor the fortunes are in the default corpus. In every task a passage whose
text has more than one label or repeats an earlier one is dropped, and so is a test passage
with a line found in a few-shot-side document or with half of its word 13-grams in few-shot-side
text (llm/data/ngram_overlap.py; for which_play under `default-run`, in any document the
default run trains on, poems included). Passages shorter than MIN_WORDS words are dropped, and
sayings longer than MAX_CHARS. Each split is then sampled (seeded) down to its cap. The
choices are the gold label and `choices - 1` distractors drawn uniformly from the task's other
labels (all plays, books or categories), in a seeded random order. Every drop is counted by
reason in the manifest, with the seed and the SHA-256 of each source. The same sources and
seed give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llm.config import DataConfig
from llm.data.corpora import prepare_builtin
from llm.data.corpus import prepare_documents, split_documents
from llm.data.fortunes import load_fortunes, split_fortunes
from llm.data.kjv import load_kjv
from llm.data.ngram_overlap import ngram_overlap
from llm.data.plays import Play, read_plays
from llm.data.tasks import (
    Document,
    chapter_ids,
    held_out_documents,
    play_documents,
    sha256,
    verse_documents,
)

PASSAGE_LINES = 2  # lines of one speech quoted per which_play question
MIN_WORDS = 6  # shorter passages are too ambiguous to be a question
MAX_CHARS = 400  # longer sayings (long poems, ascii drawings) are left out of which_fortune
OVERLAP_N = 13  # words per n-gram of the near-copy check (Brown et al. 2020's contamination n)
OVERLAP_MAX = 0.5  # a test passage with this share of its n-grams in few-shot-side text is cut
SPLITS = ("test", "fewshot")
PLAY_SPLITS = ("default-run", "scenes")
# display names where the corpus title's words are not the play's usual name
PLAY_NAMES = {
    "alls_well_that_ends_well": "All's Well That Ends Well",
    "comedy_of_errors": "The Comedy of Errors",
    "john": "King John",
    "lear": "King Lear",
    "loves_labours_lost": "Love's Labour's Lost",
    "measure_for_measure": "Measure for Measure",
    "merchant_of_venice": "The Merchant of Venice",
    "merry_wives_of_windsor": "The Merry Wives of Windsor",
    "midsummer_nights_dream": "A Midsummer Night's Dream",
    "taming_of_the_shrew": "The Taming of the Shrew",
    "tempest": "The Tempest",
    "tragedy_of_titus_andronicus": "Titus Andronicus",
    "two_gentlemen_of_verona": "The Two Gentlemen of Verona",
    "winters_tale": "The Winter's Tale",
}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One passage that can become a question."""

    ref: str  # its place in the source, the record id: "hamlet/3:12.0", "Genesis 1:3", "art#4"
    doc: str  # the document the split assigns it by: a play section, a chapter, a saying
    label: str  # the answer: a play's name, a book, a category
    text: str  # the passage quoted by the question
    lines: tuple[str, ...]  # its source lines, checked against few-shot-side text


@dataclasses.dataclass(frozen=True)
class Source:
    """A task's passages, documents, held-out documents, label set and manifest entry."""

    units: list[Unit]
    docs: list[Document]
    held: set[str]  # documents whose passages may be test questions
    labels: list[str]  # every label, the distractors' pool
    entry: dict
    # text a test passage must not largely repeat (None: the few-shot-side documents)
    check_texts: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class MCOptions:
    seed: int = 0  # seed of the held-out documents, the samples and the choices
    choices: int = 4  # choices per question: the gold and choices - 1 distractors
    max_test: int = 1000  # test questions per task at most (a seeded sample; the rest counted)
    max_fewshot: int = 1000  # few-shot questions per task at most
    play_split: str = "default-run"  # "default-run" | "scenes" (module docstring)
    cache: str | None = None  # downloads and corpora (default: $LLM_CACHE_DIR)
    fortunes: str | None = None  # an installed fortunes folder instead of the .deb

    def __post_init__(self):
        if self.choices < 2:
            raise ValueError(f"--choices {self.choices}: must be at least 2")
        if self.max_test < 1 or self.max_fewshot < 1:
            raise ValueError("--max-test and --max-fewshot must be positive")
        if self.play_split not in PLAY_SPLITS:
            raise ValueError(f"--play-split {self.play_split!r}: one of {PLAY_SPLITS}")


@dataclasses.dataclass(frozen=True)
class MCTask:
    load: Callable[[MCOptions, Counter], Source]
    question: str  # the query, with {text} for the passage
    help: str


def _words(text: str) -> int:
    return len(text.split())


# ----------------------------------------------------------------------------- sources


def play_name(play: Play) -> str:
    return PLAY_NAMES.get(play.title, play.name)


def play_passages(plays: list[Play], dropped: Counter) -> list[Unit]:
    """Every speech cut into runs of PASSAGE_LINES lines (the last run may be shorter)."""
    units = []
    for play in plays:
        for section in play.sections:
            for s, speech in enumerate(section.speeches):
                for i in range(0, len(speech.lines), PASSAGE_LINES):
                    lines = speech.lines[i : i + PASSAGE_LINES]
                    if _words(" ".join(lines)) < MIN_WORDS:
                        dropped["short_passage"] += 1
                        continue
                    ref = f"{section.id}:{s}.{i}"
                    units.append(Unit(ref, section.id, play_name(play), "\n".join(lines), lines))
    return units


def default_run_split(documents: Path, cache: str | None) -> tuple[list[str], list[str]]:
    """(titles of the Shakespeare documents the default run validates on, texts of those it
    trains on): the preparation and split of training (DataConfig defaults, which
    configs/default.yaml keeps)."""
    cfg = DataConfig(corpus="shakespeare", cache_dir=cache)
    docs, _ = prepare_documents(cfg, "shakespeare")
    split = split_documents(docs, cfg.val_fraction, cfg.seed)
    with documents.open(encoding="utf-8") as f:
        titles = [json.loads(line)["title"] for line in f]
    held = []
    for doc in split["validation"]:
        path, _, line = doc.origin.rpartition(":")
        if Path(path) != documents:
            raise ValueError(f"{doc.origin}: expected a line of {documents}")
        held.append(titles[int(line) - 1])
    return held, [d.text for d in split["train"]]


def load_plays(opts: MCOptions, dropped: Counter) -> Source:
    path = prepare_builtin("shakespeare", opts.cache)
    plays, skipped = read_plays(path)
    docs = play_documents(plays)  # one per section; group = the play's title
    entry = {"file": f"corpora/shakespeare/{path.name}", "sha256": sha256(path),
             "plays": len(plays), "skipped_documents": skipped,
             "split": opts.play_split}  # fmt: skip
    check = None
    if opts.play_split == "scenes":
        held = held_out_documents(docs, opts.seed, "shakespeare")
    else:
        titles, check = default_run_split(path, opts.cache)
        held = {d.id for d in docs if d.group in titles}
        entry["default_run_validation_documents"] = titles
        if not held:
            raise ValueError(f"the default run holds out no play ({titles}); use --play-split "
                             "scenes")  # fmt: skip
    units = play_passages(plays, dropped)
    return Source(units, docs, held, sorted({play_name(p) for p in plays}), entry, check)


def load_bible(opts: MCOptions, dropped: Counter) -> Source:
    verses, wheel = load_kjv(opts.cache)
    docs = verse_documents(verses)  # one per chapter; group = the book
    units = []
    for v, doc in zip(verses, chapter_ids(verses), strict=True):
        if _words(v.text) < MIN_WORDS:
            dropped["short_passage"] += 1
        else:
            units.append(Unit(v.ref, doc, v.book, v.text, (v.text,)))
    entry = {"file": wheel.name, "sha256": sha256(wheel), "verses": len(verses)}
    held = held_out_documents(docs, opts.seed, "kjv")
    return Source(units, docs, held, list(dict.fromkeys(v.book for v in verses)), entry)


def load_sayings(opts: MCOptions, dropped: Counter) -> Source:
    files, entry = load_fortunes(opts.fortunes, opts.cache)
    units = []
    for category in sorted(files):
        kept = []
        for k, text in enumerate(split_fortunes(files[category])):
            if _words(text) < MIN_WORDS:
                dropped["short_passage"] += 1
            elif len(text) > MAX_CHARS:
                dropped["long_saying"] += 1
            else:
                kept.append(Unit(f"{category}#{k}", f"{category}#{k}", category, text, (text,)))
        if len(kept) < 2:  # a held-out split needs a saying on each side
            dropped["category_with_under_2_sayings"] += len(kept)
            entry.setdefault("categories_dropped", []).append(category)
        else:
            units += kept
    docs = [Document(u.doc, u.label, u.lines) for u in units]
    held = held_out_documents(docs, opts.seed, "fortunes")
    return Source(units, docs, held, sorted({u.label for u in units}), entry)


MC_TASKS = {
    "which_play": MCTask(
        load_plays,
        "Passage: {text}\nQuestion: Which play by Shakespeare is this passage from?\nAnswer:",
        "a few lines of a speech -> which Shakespeare play",
    ),
    "which_book": MCTask(
        load_bible,
        "Verse: {text}\nQuestion: Which book of the King James Bible is this verse from?\nAnswer:",
        "a KJV verse -> which book of the Bible",
    ),
    "which_fortune": MCTask(
        load_sayings,
        "Fortune: {text}\nQuestion: In which category of the Unix fortune collection is "
        "this saying?\nAnswer:",
        "a saying of the Debian fortunes package -> which category (file)",
    ),
}


# ----------------------------------------------------------------------------- building


def split_units(source: Source, dropped: Counter) -> dict[str, list[Unit]]:
    """(test, fewshot) by held-out document; a test passage with a line in a few-shot-side
    document, a text with two labels and a repeated text are dropped and counted."""
    labels: dict[str, set[str]] = {}
    for u in source.units:
        labels.setdefault(u.text, set()).add(u.label)
    fewshot_lines = {x for d in source.docs if d.id not in source.held for x in d.lines}
    split: dict[str, list[Unit]] = {"test": [], "fewshot": []}
    seen = set()
    for u in source.units:
        if len(labels[u.text]) > 1:
            dropped["text_with_several_labels"] += 1
        elif u.text in seen:
            dropped["repeated_text"] += 1
        elif u.doc not in source.held:
            split["fewshot"].append(u)
        elif fewshot_lines.intersection(u.lines):
            dropped["test_line_in_fewshot_documents"] += 1
        else:
            split["test"].append(u)
        seen.add(u.text)
    return split


def drop_overlapping(units: list[Unit], source: Source, dropped: Counter) -> list[Unit]:
    """`units` less those with at least OVERLAP_MAX of their word OVERLAP_N-grams in the
    source's check texts (llm/data/ngram_overlap.py): near copies that exact matching misses
    (parallel verses of Kings and Chronicles, a saying filed twice with another attribution,
    a scene quoted in a poem)."""
    texts = source.check_texts
    if texts is None:
        texts = ["\n".join(d.lines) for d in source.docs if d.id not in source.held]
    scan = ngram_overlap([u.text for u in units], texts, OVERLAP_N)
    kept = [u for u, o in zip(units, scan.items, strict=True)
            if not (o.found and o.fraction >= OVERLAP_MAX)]  # fmt: skip
    dropped["test_overlaps_fewshot_side_text"] += len(units) - len(kept)
    return kept


def sample(units: list[Unit], cap: int, rng: np.random.Generator) -> list[Unit]:
    """At most `cap` of `units`, drawn without replacement, kept in source order."""
    if len(units) <= cap:
        return units
    return [units[i] for i in sorted(rng.choice(len(units), cap, replace=False))]


def mc_record(unit: Unit, question: str, labels: list[str], k: int,
              rng: np.random.Generator) -> dict:  # fmt: skip
    """The question: the gold label and k - 1 distinct distractors, in a random order."""
    others = [x for x in labels if x != unit.label]
    picked = [unit.label, *(others[i] for i in rng.choice(len(others), k - 1, replace=False))]
    order = rng.permutation(k)
    return {
        "id": unit.ref,
        "query": question.format(text=unit.text),
        "choices": [picked[i] for i in order],
        "gold": int(np.flatnonzero(order == 0)[0]),
        "domain": unit.label,
        "text": unit.text,
    }


def write_mc_task(folder: Path, name: str, source: Source, opts: MCOptions,
                  dropped: Counter) -> dict:  # fmt: skip
    """Splits, samples and writes one task; returns its manifest entry."""
    if len(source.labels) < opts.choices:
        raise ValueError(f"--choices {opts.choices}: task {name} has only "
                         f"{len(source.labels)} labels")  # fmt: skip
    split = split_units(source, dropped)
    split["test"] = drop_overlapping(split["test"], source, dropped)
    rng = np.random.default_rng([opts.seed, zlib.crc32(name.encode())])
    folder.mkdir(parents=True, exist_ok=True)
    entry: dict = {"help": MC_TASKS[name].help, "labels": len(source.labels)}
    for s, cap in zip(SPLITS, (opts.max_test, opts.max_fewshot), strict=True):
        if not split[s]:
            raise ValueError(f"task {name}: no {s} passages left (drops: {dict(dropped)})")
        units = sample(split[s], cap, rng)
        dropped[f"{s}_not_sampled"] += len(split[s]) - len(units)
        records = [mc_record(u, MC_TASKS[name].question, source.labels, opts.choices, rng)
                   for u in units]  # fmt: skip
        with (folder / f"{s}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        entry[s] = {
            "count": len(records),
            "gold_labels": len({u.label for u in units}),
            "gold_position": [sum(r["gold"] == i for r in records) for i in range(opts.choices)],
        }
    return entry | {"dropped": dict(sorted(dropped.items()))}


def build_mc_tasks(out: Path, names: list[str] | None = None,
                   opts: MCOptions | None = None) -> dict:  # fmt: skip
    """Writes every task's files and the manifest under `out`; returns the manifest."""
    opts = opts or MCOptions()
    manifest: dict = {"seed": opts.seed, "choices": opts.choices, "min_words": MIN_WORDS,
                      "passage_lines": PASSAGE_LINES, "max_chars": MAX_CHARS,
                      "overlap_n": OVERLAP_N, "overlap_max": OVERLAP_MAX,
                      "max_test": opts.max_test, "max_fewshot": opts.max_fewshot,
                      "sources": {}, "tasks": {}}  # fmt: skip
    for name in names or list(MC_TASKS):
        dropped: Counter = Counter()
        source = MC_TASKS[name].load(opts, dropped)
        manifest["sources"][name] = source.entry
        manifest["tasks"][name] = write_mc_task(out / name, name, source, opts, dropped)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def format_manifest(manifest: dict) -> str:
    """A table of the built tasks: counts, labels and drops."""
    lines = [f"{'task':<15} {'test':>6} {'fewshot':>8} {'labels':>7} {'test golds':>10}  dropped"]
    for name, t in manifest["tasks"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "-"
        lines.append(f"{name:<15} {t['test']['count']:>6} {t['fewshot']['count']:>8} "
                     f"{t['labels']:>7} {t['test']['gold_labels']:>10}  {dropped}")  # fmt: skip
    return "\n".join(lines)

"""Instruction and classification sets built offline from Shakespeare's plays and the KJV.

    llm data tasks --out tasks/ --seed 0 --tasks kjv_book_qa,shakespeare_play

writes `tasks/<task>/{train,test}.jsonl` and `tasks/manifest.json`. Instruction records are
`{"instruction", "input", "output"}` (what `data.format=chat` reads, llm/data/sft.py);
classification records are `{"text", "label"}` (llm/data/classification.py).

The split is by document, never by record: a document is a section of a play (an act or a
scene, llm/data/plays.py) or a chapter of the Bible (a book of one chapter counts as two
documents, its first and second half, so that it can be in both splits). Within each play and
each book, `held_out` of the documents (at least one, never all) go to `test`, drawn with a
fixed seed; every task of a source shares its split. Then a test record that carries a line
also found anywhere in the training documents (a repeated "Come, come, come, come." or a verse
Kings shares with Chronicles) is dropped, and for tasks whose output is a label (play, speaker,
book) only labels present in both splits are kept, so the label set is the same in both.
Every record dropped is counted per reason in the manifest; the manifest also holds the seed,
the SHA-256 of each source file, the held-out document ids and the speaker-parsing problems.
Output is deterministic: the same sources and seed give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from llm.data.corpora import prepare_builtin
from llm.data.kjv import Verse, load_kjv
from llm.data.plays import Play, problem_counts, read_plays

HELD_OUT = 0.1  # fraction of each play's sections and each book's chapters held out for test
MIN_WORDS = 4  # a play line shorter than this is too ambiguous to be a question on its own
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Item:
    """One record before the split: its document, the label it asks for, the lines it carries."""

    doc: str  # document id: "<play>/<section>" or "<book> <chapter>[a|b]"
    group: str  # the play or book: each holds out its own documents
    record: dict[str, str]
    lines: tuple[str, ...]  # source text inside the record (checked against training text)
    label: str | None = None  # the answer, for tasks whose answer is one of a label set


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    group: str
    lines: tuple[str, ...]  # every line (speech line or verse) of the document


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "instruction" | "classification"
    source: str  # "shakespeare" | "kjv"
    build: Callable[..., Iterator[Item]]
    help: str


# ----------------------------------------------------------------------------- Shakespeare


def _play_lines(play: Play) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(section id, speaker, speech lines) of every speech of the play."""
    for section in play.sections:
        for speech in section.speeches:
            yield section.id, speech.speaker, speech.lines


def _long(line: str) -> bool:
    return len(line.split()) >= MIN_WORDS


def play_items(plays: list[Play], skipped: Counter) -> Iterator[Item]:
    for play in plays:
        for doc, _, lines in _play_lines(play):
            skipped["short_line"] += sum(not _long(x) for x in lines)
            for line in filter(_long, lines):
                yield Item(doc, play.title, {"text": line, "label": play.name}, (line,),
                           play.name)  # fmt: skip


def speaker_items(plays: list[Play], skipped: Counter) -> Iterator[Item]:
    for play in plays:
        ask = f"Who speaks this line in {play.name}? Answer with the speaker's name only."
        for doc, speaker, lines in _play_lines(play):
            skipped["short_line"] += sum(not _long(x) for x in lines)
            for line in filter(_long, lines):
                record = {"instruction": ask, "input": line, "output": speaker}
                yield Item(doc, play.title, record, (line,), f"{play.title}/{speaker}")


def next_line_items(plays: list[Play], skipped: Counter) -> Iterator[Item]:
    for play in plays:
        ask = f"Continue this verse from {play.name}: give the line that follows it."
        for doc, _, lines in _play_lines(play):
            for line, after in itertools.pairwise(lines):
                if not (_long(line) and _long(after)):
                    skipped["short_line"] += 1
                    continue
                record = {"instruction": ask, "input": line, "output": after}
                yield Item(doc, play.title, record, (line, after))


def play_documents(plays: list[Play]) -> list[Document]:
    by_doc: dict[tuple[str, str], list[str]] = defaultdict(list)
    for play in plays:
        for doc, _, lines in _play_lines(play):
            by_doc[doc, play.title] += lines
    return [Document(doc, group, tuple(lines)) for (doc, group), lines in by_doc.items()]


# --------------------------------------------------------------------------------- Bible


def chapter_ids(verses: list[Verse]) -> list[str]:
    """Each verse's document: its chapter, or the half of a book's only chapter."""
    chapters = Counter(v.book for v in verses if v.verse == 1)
    sizes = Counter(v.book for v in verses)
    return [
        f"{v.book} {v.chapter}" + ("" if chapters[v.book] > 1 else
                                   "a" if v.verse <= sizes[v.book] // 2 else "b")
        for v in verses
    ]  # fmt: skip


def quote_items(verses: list[Verse], skipped: Counter) -> Iterator[Item]:
    for v, doc in zip(verses, chapter_ids(verses), strict=True):
        record = {"instruction": f"Quote {v.ref} from the King James Bible.", "input": "",
                  "output": v.text}  # fmt: skip
        yield Item(doc, v.book, record, (v.text,))


def book_items(verses: list[Verse], skipped: Counter) -> Iterator[Item]:
    for v, doc in zip(verses, chapter_ids(verses), strict=True):
        yield Item(doc, v.book, {"text": v.text, "label": v.book}, (v.text,), v.book)


BOOK_QUESTION = "Which book of the Bible is this verse from? Answer with the book's name only."


def book_qa_items(verses: list[Verse], skipped: Counter) -> Iterator[Item]:
    for v, doc in zip(verses, chapter_ids(verses), strict=True):
        record = {"instruction": BOOK_QUESTION, "input": v.text, "output": v.book}
        yield Item(doc, v.book, record, (v.text,), v.book)


def verse_documents(verses: list[Verse]) -> list[Document]:
    by_doc: dict[tuple[str, str], list[str]] = defaultdict(list)
    for v, doc in zip(verses, chapter_ids(verses), strict=True):
        by_doc[doc, v.book].append(v.text)
    return [Document(doc, group, tuple(lines)) for (doc, group), lines in by_doc.items()]


TASKS = {
    "shakespeare_play": Task("classification", "shakespeare", play_items,
                             "which play is this line from?"),
    "shakespeare_speaker": Task("instruction", "shakespeare", speaker_items,
                                "who speaks this line (in this play)?"),
    "shakespeare_next_line": Task("instruction", "shakespeare", next_line_items,
                                  "continue the verse: the next line of the speech"),
    "kjv_quote": Task("instruction", "kjv", quote_items, "quote Genesis 1:3"),
    "kjv_book": Task("classification", "kjv", book_items, "which book is this verse from?"),
    "kjv_book_qa": Task("instruction", "kjv", book_qa_items,
                        "which book is this verse from? (as an instruction)"),
}  # fmt: skip


# ----------------------------------------------------------------------------- splitting


def held_out_documents(docs: list[Document], seed: int, source: str) -> set[str]:
    """Per group, round(HELD_OUT * n) of its n documents (at least 1, at most n - 1)."""
    rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
    by_group: dict[str, list[str]] = defaultdict(list)
    for d in docs:
        by_group[d.group].append(d.id)
    held = set()
    for group in sorted(by_group):
        ids = by_group[group]
        if len(ids) < 2:
            raise ValueError(f"{source}: {group!r} has {len(ids)} document(s); a held-out "
                             "split by document needs at least 2")  # fmt: skip
        k = min(len(ids) - 1, max(1, round(HELD_OUT * len(ids))))
        held.update(ids[i] for i in sorted(rng.choice(len(ids), k, replace=False)))
    return held


def split_items(items: list[Item], held: set[str], train_lines: set[str], skipped: Counter,
                labelled: bool) -> dict[str, list[Item]]:  # fmt: skip
    """(train, test) by document; test records repeating training text dropped and counted;
    for labelled tasks, labels missing from either split dropped and counted."""
    split = {"train": [i for i in items if i.doc not in held], "test": []}
    for item in (i for i in items if i.doc in held):
        if train_lines.intersection(item.lines):
            skipped["test_line_in_train_documents"] += 1
        else:
            split["test"].append(item)
    if labelled:
        both = {i.label for i in split["train"]} & {i.label for i in split["test"]}
        for name in SPLITS:
            kept = [i for i in split[name] if i.label in both]
            skipped[f"{name}_label_not_in_both_splits"] += len(split[name]) - len(kept)
            split[name] = kept
    return split


# ------------------------------------------------------------------------------- building


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_source(name: str, cache: str | None) -> tuple[list, list[Document], dict]:
    """(the source's parsed units, its documents, its manifest entry)."""
    if name == "kjv":
        verses, wheel = load_kjv(cache)
        entry = {"file": wheel.name, "sha256": sha256(wheel), "verses": len(verses)}
        return verses, verse_documents(verses), entry
    path = prepare_builtin("shakespeare", cache)
    plays, skipped = read_plays(path)
    problems = problem_counts(plays)
    entry = {
        "file": f"corpora/shakespeare/{path.name}", "sha256": sha256(path), "plays": len(plays),
        "skipped_documents": skipped, "unparsable_paragraphs": sum(problems.values()),
        "unparsable_by_play": problems,
        "unparsable_examples": [e for p in plays for e in p.examples[:1]],
        "speaker_abbreviations": {p.title: p.expansions for p in plays if p.expansions},
    }  # fmt: skip
    return plays, play_documents(plays), entry


def parse_task_names(spec: str | None, known: Iterable[str] = TASKS) -> list[str]:
    """The names of a --tasks value (all of `known` when empty), in order, without repeats."""
    known = list(known)
    names = known if not spec else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; known: {', '.join(known)}")
    return list(dict.fromkeys(names))


def build_tasks(out: Path, seed: int = 0, names: list[str] | None = None,
                cache: str | None = None) -> dict:  # fmt: skip
    """Writes every task's splits and the manifest under `out`; returns the manifest."""
    names = names or list(TASKS)
    manifest: dict = {"seed": seed, "held_out_fraction": HELD_OUT, "min_words": MIN_WORDS,
                      "sources": {}, "held_out": {}, "tasks": {}}  # fmt: skip
    for source in sorted({TASKS[n].source for n in names}):
        units, docs, entry = load_source(source, cache)
        held = held_out_documents(docs, seed, source)
        train_lines = {x for d in docs if d.id not in held for x in d.lines}
        manifest["sources"][source] = entry
        manifest["held_out"][source] = sorted(held)
        for name in (n for n in names if TASKS[n].source == source):
            manifest["tasks"][name] = write_task(out, name, units, held, train_lines, seed)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def write_task(out: Path, name: str, units: list, held: set[str], train_lines: set[str],
               seed: int) -> dict:  # fmt: skip
    """Builds, splits and writes one task; returns its manifest entry."""
    task, skipped = TASKS[name], Counter()
    items = list(task.build(units, skipped))
    if not items:
        raise ValueError(f"task {name}: the {task.source} source yields no records")
    split = split_items(items, held, train_lines, skipped, labelled=items[0].label is not None)
    order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(
        len(split["train"])
    )
    split["train"] = [split["train"][i] for i in order]  # train shuffled; test in text order
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        with (folder / f"{s}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(i.record, ensure_ascii=False) + "\n" for i in split[s])
    labels = {i.label for i in split["train"]} if items[0].label is not None else None
    return {
        "kind": task.kind, "source": task.source, "help": task.help,
        "counts": {s: len(split[s]) for s in SPLITS},
        "labels": None if labels is None else len(labels),
        "dropped": dict(sorted(skipped.items())),
    }  # fmt: skip

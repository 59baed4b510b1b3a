"""Shakespeare's plays as sections (an act or a scene) of speeches: (speaker, lines).

The Project Gutenberg texts of `corpora.prepare_builtin("shakespeare")` share a layout but
not a house style, so the parser keeps to what all of them do and counts what it cannot read:

* A section starts at an act or scene heading (`ACT I.`, `Act 2`, `SCENE 3.`, `Scene IV.`,
  `ACT FIRST`) or a prologue / epilogue / induction heading; its id is `<play>/<k>` with k
  counting headings from 1. The text before the first heading (title, dramatis personae) is
  front matter and yields no speeches.
* Inside a section, paragraphs are separated by blank lines. A paragraph that starts with
  `[` is a stage direction. A paragraph whose first line is a speaker heading (one to five
  capitalised words, `of`/`and`/`the` between them, an optional final period: `Ham.`,
  `KING HENRY.`, `ANTIPHOLUS OF SYRACUSE.`, `HELENA`, `1 Citizen.`) followed by at least one
  line is a speech, as is a heading in capitals with its speech on the same line
  (`FIRST GENTLEMAN. Some twenty years.`); bracketed directions are removed from its lines.
  Any other paragraph (a speech continued after a blank line, a song, an unbracketed
  direction) is a parse problem: counted per play, with examples, never silently dropped.
* Speaker names: an all-capitals heading is title-cased (`KING HENRY` -> `King Henry`); a
  one-word abbreviation (`Ham`) that is the prefix of exactly one capitalised word of the
  front matter is expanded (`Hamlet`; never to its own plural: `Messenger` stays), and every
  expansion is reported.
* A document with no speech at all (the sonnets and narrative poems) is not a play; it is
  reported as skipped with that reason.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path

_ACT = r"(?:ACT|Act)\s+(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b"
_SCENE = r"(?:SCENE|Scene)\s+(?:[IVXLC]+|\d+)\b"
_FRAME = r"(?:THE\s+)?(?:PROLOGUE|EPILOGUE|INDUCTION|Prologue|Epilogue|Induction)\b"
HEADING_RE = re.compile(rf"^(?:{_ACT}|{_SCENE}|{_FRAME}).*$", re.M)
_WORD = r"[A-Z][A-Za-z'\-]*\.?"
SPEAKER_RE = re.compile(rf"^((?:\d\s+)?{_WORD}(?:\s+(?:{_WORD}|of|and|the)){{0,4}})\s*$")
# a heading in capitals with the speech on the same line: "FIRST GENTLEMAN. Some twenty years."
INLINE_RE = re.compile(r"^((?:\d\s+)?[A-Z][A-Z'\-]+(?:\s+[A-Z][A-Z'\-]+){0,3})\.\s+(\S.*)$")
DIRECTION_RE = re.compile(r"\[[^\]]*\]?")
PROBLEM_EXAMPLES = 5  # examples of unparsable paragraphs kept per play


@dataclasses.dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]  # stage directions removed, stripped, non-empty


@dataclasses.dataclass(frozen=True)
class Section:
    id: str  # "<play>/<k>"
    heading: str  # the heading line, e.g. "SCENE 2. Belmont. A room in PORTIA'S house"
    speeches: tuple[Speech, ...]


@dataclasses.dataclass(frozen=True)
class Play:
    title: str  # the corpus' document title, e.g. "henry_iv_part_1"
    name: str  # display name, e.g. "Henry IV Part 1"
    sections: tuple[Section, ...]  # those with at least one speech
    problems: int  # unparsable paragraphs
    examples: tuple[str, ...]  # the first few of them, "<section id>: <first line>"
    expansions: dict[str, str]  # abbreviated speaker -> expanded name


def display_name(title: str) -> str:
    """`henry_iv_part_1` -> `Henry IV Part 1`; `alls_well_that_ends_well` -> `Alls Well...`."""
    small = {"of", "and", "the", "that", "a"}
    words = []
    for k, w in enumerate(title.split("_")):
        if re.fullmatch(r"[ivxl]+", w) and w not in {"i", "will"}:
            words.append(w.upper())
        else:
            words.append(w if k and w in small else w.capitalize())
    return " ".join(words)


def parse_play(title: str, text: str) -> Play:
    """The play's sections of speeches; the module docstring gives the rules."""
    heads = list(HEADING_RE.finditer(text))
    front = text[: heads[0].start()] if heads else text
    words = set(re.findall(r"\b[A-Z][a-z]{2,}\b", front))
    speakers = _SpeakerNames(words)
    sections, problems, examples = [], 0, []
    for k, head in enumerate(heads, 1):
        end = heads[k].start() if k < len(heads) else len(text)
        sid = f"{title}/{k}"
        speeches, bad = _parse_section(text[head.end() : end], speakers)
        problems += len(bad)
        examples += [f"{sid}: {b}" for b in bad[: PROBLEM_EXAMPLES - len(examples)]]
        if speeches:
            sections.append(Section(sid, head.group().strip(), tuple(speeches)))
    return Play(title, display_name(title), tuple(sections), problems, tuple(examples),
                dict(sorted(speakers.expanded.items())))  # fmt: skip


def _parse_section(body: str, speakers: _SpeakerNames) -> tuple[list[Speech], list[str]]:
    speeches, bad = [], []
    for para in re.split(r"\n\s*\n", body):
        lines = [ln.rstrip() for ln in para.strip("\n").split("\n") if ln.strip()]
        if not lines or lines[0].lstrip().startswith("["):
            continue  # blank, or a stage direction
        first = DIRECTION_RE.sub("", lines[0]).strip()
        match = SPEAKER_RE.match(first)
        inline = None if match else INLINE_RE.match(first)
        if inline:
            match, lines = inline, [first, inline.group(2), *lines[1:]]
        spoken = [s for s in (" ".join(DIRECTION_RE.sub("", x).split()) for x in lines[1:]) if s]
        if match and spoken:
            speeches.append(Speech(speakers.name(match.group(1)), tuple(spoken)))
        elif not (match and len(lines) > 1):  # a speaker whose lines were all directions is
            bad.append(lines[0].strip()[:80])  # a speech without words, not a problem
    return speeches, bad


class _SpeakerNames:
    """Normalised speaker names, expanding abbreviations against the front matter's words."""

    def __init__(self, front_words: set[str]):
        self.words, self.expanded = front_words, {}

    def name(self, heading: str) -> str:
        name = " ".join(heading.split()).rstrip(".").strip()
        if name.isupper():
            name = " ".join(w if w in {"of", "and", "the"} else w.capitalize()
                            for w in name.lower().split())  # fmt: skip
        if " " in name or name in self.words:
            return name
        hits = [w for w in self.words if w.startswith(name) and w not in plurals(name)]
        if len(hits) == 1:
            self.expanded[name] = hits[0]
            return hits[0]
        return name


def plurals(name: str) -> set[str]:
    """The word itself and its plurals, which a heading is never an abbreviation of."""
    return {name, name + "s", name + "es"}


def read_plays(documents: Path) -> tuple[list[Play], dict[str, str]]:
    """(plays, {skipped title: reason}) of a `documents.jsonl` of the Shakespeare corpus."""
    plays, skipped = [], {}
    with documents.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            record = json.loads(line)
            if not isinstance(record, dict) or not {"title", "text"} <= set(record):
                raise ValueError(f"{documents}:{number}: expected an object with title, text")
            play = parse_play(record["title"], record["text"])
            if play.sections:
                plays.append(play)
            else:
                skipped[play.title] = "no speeches under act/scene headings (not a play)"
    if not plays:
        raise ValueError(f"{documents}: no play with speeches found")
    return plays, skipped


def problem_counts(plays: list[Play]) -> dict[str, int]:
    """Unparsable paragraphs per play (plays without problems left out), most first."""
    counts = collections.Counter({p.title: p.problems for p in plays if p.problems})
    return dict(counts.most_common())

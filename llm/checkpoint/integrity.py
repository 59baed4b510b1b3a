"""Checksums of every checkpoint file: written inside the atomic commit, verified before a restore.

orbax's atomic rename guarantees that a step directory is complete when it appears; it says
nothing about its bytes afterwards (a bit flipped on disk or in a copy, a file cut short or
replaced by hand), and orbax itself never checks them: a changed array file restores the
changed values without a word. So every step directory carries `checksums.json`, the size and
SHA-256 of each of its files. `ChecksummedRename` writes it into the temporary directory just
before orbax renames that directory into place, so the manifest is part of the same atomic
commit: no step is ever visible without it. `verify` recomputes it before any restore
(`Checkpointer.restore`, `load_model`); a difference raises `CorruptCheckpoint`, which the
restore paths treat like an unreadable step: reported, and the next older step tried.

Two files at the step's top level are written by orbax after the manifest, in the commit
itself, and so are not in it: `commit_success.txt` (only its presence counts: orbax lists no
step without it) and `_CHECKPOINT_METADATA` (timestamps and item handler names; nothing a
restore returns comes from it). `verify` only checks that the latter still parses.

A step written before checksums existed has neither the manifest nor the `checksums` key in
its `meta` item (which the Checkpointer adds); it is restored unverified, with a warning. A
step whose meta names the manifest but lacks it is corrupt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import orbax.checkpoint as ocp

MANIFEST = "checksums.json"  # in every step directory: {"sha256": {relative path: hex}, ...}
LATE_FILES = ("commit_success.txt", "_CHECKPOINT_METADATA")  # written by orbax after it
META_KEY = "checksums"  # in the meta item: names the manifest, so its absence is noticed


class CorruptCheckpoint(RuntimeError):
    """A checkpoint's files differ from the checksums written with them."""


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(step_dir: Path) -> list[Path]:
    """Every file the manifest covers, in a fixed order."""
    skip = {step_dir / name for name in (*LATE_FILES, MANIFEST)}
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p not in skip)


def write_manifest(step_dir: Path) -> None:
    """Writes `step_dir/checksums.json` over every file below `step_dir`."""
    files = _files(step_dir)
    manifest = {
        "sha256": {str(p.relative_to(step_dir)): _digest(p) for p in files},
        "bytes": {str(p.relative_to(step_dir)): p.stat().st_size for p in files},
    }
    (step_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify(step_dir: Path) -> None:
    """Raises CorruptCheckpoint naming the first file that differs from the manifest."""
    step_dir = Path(step_dir)
    manifest_path = step_dir / MANIFEST
    if not manifest_path.is_file():
        _unverified(step_dir)
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        sha, size = manifest["sha256"], manifest["bytes"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{manifest_path} is unreadable ({err})") from None
    for name, want in sorted(sha.items()):
        path = step_dir / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{path} is missing (listed in {MANIFEST})")
        if path.stat().st_size != size.get(name) or _digest(path) != want:
            raise CorruptCheckpoint(f"{path} differs from its checksum in {MANIFEST}")
    metadata = step_dir / "_CHECKPOINT_METADATA"
    try:
        json.loads(metadata.read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{metadata} is unreadable ({err})") from None


def _unverified(step_dir: Path) -> None:
    """No manifest: a step from before checksums (warn) or one that lost it (corrupt)."""
    meta = step_dir / "meta" / "metadata"
    try:
        names_manifest = META_KEY in json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{step_dir} has no {MANIFEST} and its meta is unreadable "
                                f"({err})") from None  # fmt: skip
    if names_manifest:
        raise CorruptCheckpoint(f"{step_dir / MANIFEST} is missing")
    print(f"warning: {step_dir} was written before checkpoints carried checksums; "
          "restoring it unverified", file=sys.stderr)  # fmt: skip


class ChecksummedRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """orbax's atomic rename, with the manifest written into a step directory just before.

    orbax finalizes each item's temporary directory (state, data, ...) inside the step's
    first, with this same class; only the step directory itself (named by its step number)
    gets a manifest, once every item in it is final.
    """

    async def finalize(self) -> None:
        if self.get_final().name.isdigit():
            await asyncio.to_thread(write_manifest, Path(str(self.get())))
        await super().finalize()

"""Readers that turn files into `Document`s: .txt, .jsonl, Parquet and Hugging Face datasets.

Every reader yields documents with their origin (`file:line`, or `file#row` for columnar files)
so that any later error or report can point at the input. Bad input raises `SourceError` naming
the file and line; documents that are legitimately absent (empty text, null values) are skipped
and counted in `LoadStats.skipped`, never dropped silently.

Parquet needs `pyarrow`; the `hf` format needs the optional `datasets` package. Both are
imported only when such a source is read.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class SourceError(ValueError):
    """Input data is unreadable or malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of raw text and where it came from."""

    text: str
    origin: str  # "path:line" (text formats) or "path#row" (columnar formats)


@dataclasses.dataclass
class LoadStats:
    """What reading the sources saw: files, documents, and skips by reason."""

    files: int = 0
    documents: int = 0
    replaced_utf8: int = 0  # documents in which invalid UTF-8 was replaced by U+FFFD
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def resolve_files(spec: str) -> list[Path]:
    """A file, a directory (its files with known extensions, recursively) or a glob, sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in EXTENSIONS]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not files:
        raise SourceError(f"{spec}: no input files found (expected {sorted(EXTENSIONS)} files)")
    return sorted(files)


def jsonl_records(spec: str, what: str) -> list[tuple[Any, str]]:
    """(parsed JSON value, "file:line") of every non-blank line of the files under `spec`, the
    reader of every record format (chat, classification, preference, prompts). Invalid UTF-8
    or JSON raises SourceError naming file:line; no record at all names `what` was sought."""
    out = []
    for path in resolve_files(spec):
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise SourceError(f"{where}: invalid UTF-8") from None
                if not line.strip():
                    continue
                try:
                    out.append((json.loads(line), where))
                except json.JSONDecodeError as err:
                    raise SourceError(f"{where}: invalid JSON ({err.msg})") from None
    if not out:
        raise SourceError(f"{spec}: no {what} records found")
    return out


def detect_format(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    if path.suffix not in EXTENSIONS:
        raise SourceError(f"{path}: unknown extension {path.suffix!r}; set data.format explicitly")
    return EXTENSIONS[path.suffix]


def read_documents(
    spec: str,
    *,
    fmt: str = "auto",
    text_field: str = "text",
    separator: str | None = None,
    errors: str = "strict",
    hf_split: str = "train",
    stats: LoadStats | None = None,
) -> list[Document]:
    """All documents of `spec` in a deterministic order; raises SourceError on bad input."""
    stats = stats if stats is not None else LoadStats()
    if fmt == "chat":
        raise SourceError(
            f"{spec}: data.format=chat holds SFT conversations, which llm.data.sft reads into "
            "batches directly; they are not plain-text documents"
        )
    if fmt == "hf":
        docs = list(_read_hf(spec, text_field, hf_split, stats))
    else:
        docs = []
        for path in resolve_files(spec):
            stats.files += 1
            kind = detect_format(path, fmt)
            if kind == "txt":
                docs.extend(_read_txt(path, separator, errors, stats))
            elif kind == "jsonl":
                docs.extend(_read_jsonl(path, text_field, errors, stats))
            else:
                docs.extend(_read_parquet(path, text_field, stats))
    stats.documents = len(docs)
    if not docs:
        skipped = dict(stats.skipped) or "none"
        raise SourceError(
            f"{spec}: empty corpus: no documents in {stats.files} file(s), {skipped=}"
        )
    return docs


def _decode(data: bytes, where: str, line: int, errors: str, stats: LoadStats) -> str:
    """UTF-8 decode; under 'strict' an invalid byte is an error naming its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors == "replace":
            stats.replaced_utf8 += 1
            return data.decode("utf-8", errors="replace")
        bad_line = line + data[: err.start].count(b"\n")
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SourceError(
            f"{where}:{bad_line}: invalid UTF-8 (byte 0x{data[err.start]:02x} at column "
            f"{column}); fix the file or set data.encoding_errors=replace"
        ) from None


def _keep(doc: Document, stats: LoadStats) -> bool:
    if doc.text.strip():
        return True
    stats.skipped["empty text"] += 1
    return False


def _read_txt(
    path: Path, separator: str | None, errors: str, stats: LoadStats
) -> Iterator[Document]:
    """One document per file, or documents separated by lines equal to `separator`."""
    text = _decode(path.read_bytes(), str(path), 1, errors, stats)
    if separator is None:
        doc = Document(text, f"{path}:1")
        if _keep(doc, stats):
            yield doc
        return
    lines: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if line.rstrip("\r\n") == separator:
            doc = Document("".join(lines), f"{path}:{start}")
            if _keep(doc, stats):
                yield doc
            lines, start = [], number + 1
        else:
            lines.append(line)
    doc = Document("".join(lines), f"{path}:{start}")
    if lines and _keep(doc, stats):
        yield doc


def _read_jsonl(path: Path, field: str, errors: str, stats: LoadStats) -> Iterator[Document]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = _decode(raw, str(path), number, errors, stats)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            text = _field(record, field, f"{path}:{number}", stats)
            if text is not None:
                doc = Document(text, f"{path}:{number}")
                if _keep(doc, stats):
                    yield doc


def _field(record: Any, field: str, where: str, stats: LoadStats) -> str | None:
    """The text field of one record; None (counted) when it is null."""
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        keys = sorted(record)[:10]
        raise SourceError(f"{where}: missing field {field!r} (keys: {keys}); set data.text_field")
    value = record[field]
    if value is None:
        stats.skipped["null text"] += 1
        return None
    if not isinstance(value, str):
        raise SourceError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
    return value


def _read_parquet(path: Path, field: str, stats: LoadStats) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if field not in names:
        raise SourceError(
            f"{path}: missing column {field!r} (columns: {names}); set data.text_field"
        )
    kind = file.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f"{path}: column {field!r} has type {kind}, not string")
    row = 0
    for batch in file.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is None:
                stats.skipped["null text"] += 1
            else:
                doc = Document(value, f"{path}#row{row}")
                if _keep(doc, stats):
                    yield doc
            row += 1


def _read_hf(spec: str, field: str, split: str, stats: LoadStats) -> Iterator[Document]:
    """A `datasets` dataset: a `save_to_disk` folder, local data files, or a hub name."""
    import datasets

    path = Path(spec).expanduser()
    if path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SourceError(f"{spec}: no split {split!r} (splits: {list(loaded)})")
            loaded = loaded[split]
    elif path.exists() or glob.glob(str(path)):
        files = resolve_files(spec)
        builder = {"txt": "text", "jsonl": "json", "parquet": "parquet"}[
            detect_format(files[0], "auto")
        ]
        loaded = datasets.load_dataset(builder, data_files=[str(f) for f in files], split=split)
    else:  # a dataset name on the hub, where the network allows it
        loaded = datasets.load_dataset(spec, split=split)
    stats.files += 1
    if field not in loaded.column_names:
        raise SourceError(f"{spec}: missing column {field!r} (columns: {loaded.column_names})")
    for row, value in enumerate(loaded[field]):
        if value is None:
            stats.skipped["null text"] += 1
            continue
        if not isinstance(value, str):
            raise SourceError(f"{spec}#row{row}: column {field!r} is {type(value).__name__}")
        doc = Document(value, f"{spec}#row{row}")
        if _keep(doc, stats):
            yield doc

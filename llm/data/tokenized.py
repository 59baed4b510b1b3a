"""Corpus -> token shards per split, cached on disk under a fingerprint of everything upstream.

The cache key hashes the corpus (file names, sizes and modification times, or the built-in
name), every DataConfig field that changes which documents survive or how they are split and
wrapped, and the tokenizer (its name, vocabulary and the encoding of a probe string). So a
change to any of these re-tokenizes, and nothing else does. Shards are written to a temporary
folder and renamed into place, so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from llm.config import DataConfig
from llm.data.corpora import BUILTIN, SDIST, cache_dir
from llm.data.corpus import CorpusReport, prepare_documents, split_documents
from llm.data.shards import ShardError, TokenShard, read_shard, write_shard
from llm.data.sources import resolve_files
from llm.tokenizers import Tokenizer
from llm.tokenizers.long_text import CHUNK_CHARS, encode_pieces

# DataConfig fields that do not change the tokens of any split (only how batches are drawn).
_BATCH_ONLY_FIELDS = {
    "objective",
    "order",
    "mlm_rate",
    "span_density",
    "span_mean_length",
    "read_threads",
    "prefetch",
    "cache_dir",
    "eval_corpus",
    "tokenizer",
}
_PROBE = "Hello, world! Ünïcödé 123\n\tend"
MAIN_SPLITS = ("train", "validation")
# Bump when cleaning, dedup, splitting or shard writing changes, so old caches are not reused.
PIPELINE_VERSION = 1
OOD_SPLIT = "ood"


def tokenizer_fingerprint(tokenizer: Tokenizer, name: str) -> dict:
    """What identifies a tokenizer's output: its name/file, vocabulary and a probe encoding."""
    ident = {
        "name": name,
        "class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "specials": [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id],
        "probe": tokenizer.encode(_PROBE),
    }
    if os.path.isfile(name):
        stat = os.stat(name)
        ident["file"] = [stat.st_size, stat.st_mtime_ns]
    return ident


def source_fingerprint(cfg: DataConfig, spec: str) -> list:
    if spec in BUILTIN:
        return [spec, SDIST]
    try:
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in resolve_files(spec)]
    except ValueError:  # a Hugging Face dataset name or a save_to_disk folder
        return [spec]


def cache_key(cfg: DataConfig, spec: str, tokenizer: Tokenizer, ood: bool) -> str:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields = {k: v for k, v in fields.items() if k not in _BATCH_ONLY_FIELDS}
    fields["corpus"] = spec
    ident = [
        PIPELINE_VERSION,
        "ood" if ood else "main",
        fields,
        source_fingerprint(cfg, spec),
        tokenizer_fingerprint(tokenizer, cfg.tokenizer),
    ]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def tokenize_documents(texts: list[str], tokenizer: Tokenizer, cfg: DataConfig, out: Path):
    """One shard of `texts`; a document over CHUNK_CHARS characters is encoded and written
    piece by piece (`encode_pieces`: the same ids), so its size does not multiply in memory."""
    bos = [tokenizer.bos_id] if cfg.add_bos else []
    eos = [tokenizer.eos_id] if cfg.add_eos else []

    def encode(text: str):
        if len(text) <= CHUNK_CHARS:  # whole, as an array: converted in the worker thread
            return [np.asarray(bos + tokenizer.encode(text) + eos, dtype=np.int64)]
        return itertools.chain([bos], encode_pieces(tokenizer, text, CHUNK_CHARS), [eos])

    return write_shard(out, texts, encode, tokenizer.vocab_size, cfg.read_threads)


def build_shards(
    cfg: DataConfig, spec: str, tokenizer: Tokenizer, out: Path, ood: bool = False
) -> CorpusReport:
    """Prepares `spec` and writes one shard folder per split under `out`, plus report.json.

    The main corpus is split into train / validation; an out-of-domain one is all "ood".
    """
    docs, report = prepare_documents(cfg, spec)
    if ood:
        splits = {OOD_SPLIT: docs}
    else:
        splits = split_documents(docs, cfg.val_fraction, cfg.seed)
    for name, split_docs in splits.items():
        shard = tokenize_documents([d.text for d in split_docs], tokenizer, cfg, out / name)
        report.splits[name] = shard.num_docs
        report.splits[f"{name} tokens"] = shard.num_tokens
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report


def is_token_dir(path: Path) -> bool:
    """True for a folder written by `llm data tokenize` (report.json and split shards)."""
    splits = (*MAIN_SPLITS, OOD_SPLIT)
    return (path / "report.json").exists() and any(
        (path / s / "meta.json").exists() for s in splits
    )


def load_shards(
    cfg: DataConfig, tokenizer: Tokenizer, ood: bool = False
) -> tuple[dict[str, TokenShard], CorpusReport, str]:
    """(split -> shard, report, cache key) of the main corpus or of the out-of-domain one."""
    spec = cfg.eval_corpus if ood else cfg.corpus
    if spec is None:
        raise ValueError("data.eval_corpus is null: there is no out-of-domain corpus")
    given = Path(spec).expanduser()
    if is_token_dir(given):
        folder, key = given, "dir:" + hashlib.sha256(str(given.resolve()).encode()).hexdigest()[:16]
    else:
        key = cache_key(cfg, spec, tokenizer, ood)
        folder = cache_dir(cfg.cache_dir) / "tokens" / key
        if not (folder / "report.json").exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}-"))
            try:
                build_shards(cfg, spec, tokenizer, tmp, ood)
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first: use theirs
                if not (folder / "report.json").exists():
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    report = CorpusReport.from_dict(json.loads((folder / "report.json").read_text()))
    shards = {p.name: read_shard(p) for p in sorted(folder.iterdir()) if (p / "meta.json").exists()}
    for name, shard in shards.items():
        if shard.vocab_size != tokenizer.vocab_size:
            raise ShardError(
                f"{folder / name}: tokenized with a vocabulary of {shard.vocab_size} ids, but "
                f"data.tokenizer={cfg.tokenizer!r} has {tokenizer.vocab_size}"
            )
    return shards, report, key

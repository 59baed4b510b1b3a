"""Data: raw text -> clean documents -> token shards -> packed, sharded, resumable batches.

    from llm.data import make_batches, to_device, batch_sharding
    it = make_batches(cfg, "train", tokenizer, process_index, process_count)
    batch = to_device(next(it), batch_sharding(mesh))
    state = it.get_state()   # JSON; it.set_state(state) continues the exact stream

See docs/data.md for the data flow, the config fields and how to bring your own data.
"""

from llm.data.classification import resolve_labels
from llm.data.corpora import CorpusDownloadError, cache_dir, prepare_builtin
from llm.data.corpus import CorpusReport, prepare_documents, split_documents
from llm.data.device import batch_sharding, to_device
from llm.data.objectives import mlm_mask, span_corrupt
from llm.data.packing import PackedRows, pack_reference
from llm.data.pipeline import BatchIterator, make_batches
from llm.data.preference import preference_rows, read_preferences
from llm.data.shards import ShardError, TokenShard, read_shard, write_shard
from llm.data.sources import Document, SourceError, read_documents
from llm.data.tokenized import load_shards

__all__ = [
    "BatchIterator",
    "CorpusDownloadError",
    "CorpusReport",
    "Document",
    "PackedRows",
    "ShardError",
    "SourceError",
    "TokenShard",
    "batch_sharding",
    "cache_dir",
    "load_shards",
    "make_batches",
    "mlm_mask",
    "pack_reference",
    "preference_rows",
    "prepare_builtin",
    "prepare_documents",
    "read_documents",
    "read_preferences",
    "read_shard",
    "resolve_labels",
    "span_corrupt",
    "split_documents",
    "to_device",
    "write_shard",
]

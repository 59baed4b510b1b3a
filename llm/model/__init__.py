"""The decoder-only Transformer and its pure-functional API (see `functional.py`)."""

from llm.model.functional import (
    abstract_params,
    forward,
    init_params,
    logical_axes,
    prime_cache,
    readout,
    unembed,
    unstack_layers,
)
from llm.model.outputs import ModelOutput
from llm.model.seq2seq import encode, seq2seq_forward, seq2seq_generate
from llm.model.transformer import Transformer

__all__ = [
    "ModelOutput",
    "Transformer",
    "abstract_params",
    "encode",
    "forward",
    "init_params",
    "logical_axes",
    "prime_cache",
    "readout",
    "seq2seq_forward",
    "seq2seq_generate",
    "unembed",
    "unstack_layers",
]

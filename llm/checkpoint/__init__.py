"""Checkpoints on disk: the run checkpoint manager and the one model loader.

    from llm.checkpoint import Checkpointer, load_model
    model = load_model("runs/default")        # or an `llm convert` or Hugging Face directory

Layering: this package reads what `llm.interop` writes and what `llm.train` saves; it never
imports `llm.train`, and `llm.interop` only inside functions (Hugging Face reading needs the
optional safetensors / jinja2). Adapters a run trained (`llm.peft`) are merged on load.
"""

from llm.checkpoint.integrity import CorruptCheckpoint
from llm.checkpoint.load import (
    LoadedModel,
    layout_of,
    load_model,
    model_config_of,
    restore_run_params,
    tokenizer_with_template,
)
from llm.checkpoint.manager import (
    Checkpointer,
    CheckpointExists,
    CheckpointMismatch,
    NonFiniteState,
    NoUsableCheckpoint,
    Restored,
)

__all__ = [
    "CheckpointExists",
    "CheckpointMismatch",
    "Checkpointer",
    "CorruptCheckpoint",
    "LoadedModel",
    "NoUsableCheckpoint",
    "NonFiniteState",
    "Restored",
    "layout_of",
    "load_model",
    "model_config_of",
    "restore_run_params",
    "tokenizer_with_template",
]

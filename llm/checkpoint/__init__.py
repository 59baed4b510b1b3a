"""Checkpoints on disk: the run checkpoint manager and the one model loader.

    from llm.checkpoint import Checkpointer, load_model
    model = load_model("runs/default")        # or an `llm convert` or Hugging Face directory

Layering: this package reads what `llm.interop` writes and what `llm.train` saves, and
imports neither at module level (Hugging Face reading is an optional dependency).
"""

from llm.checkpoint.load import (
    LoadedModel,
    layout_of,
    load_model,
    model_config_of,
    restore_run_params,
)
from llm.checkpoint.manager import Checkpointer, CheckpointMismatch, NoUsableCheckpoint, Restored

__all__ = [
    "CheckpointMismatch",
    "Checkpointer",
    "LoadedModel",
    "NoUsableCheckpoint",
    "Restored",
    "layout_of",
    "load_model",
    "model_config_of",
    "restore_run_params",
]

"""A warm start's config: the architecture and tokenizer come from the weights it starts from.

    cfg = warm_start_config(cfg)   # a no-op unless train.init_from is set

Weights only mean something with the architecture and the tokenizer they were trained with,
so with `train.init_from=DIR` the run's `model:` section and `data.tokenizer` are taken from
DIR (a run, an `llm convert` output or a Hugging Face directory: `llm.checkpoint`), except
the fields that change how the model runs, not what its weights compute (`RUN_FIELDS`:
dropout, compute dtype, remat, scan/unroll, attention backend), which stay the run's.
A field the run's config sets to something other than both the default and the source's value
is named on stderr, so an architecture change the user meant is never dropped silently.

Once the run has checkpoints of its own, its saved `config.yaml` is its record of the
architecture: a resumed warm start reads that, and the source directory may be gone by then.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from llm.checkpoint import model_config_of
from llm.checkpoint.load import quantization_of
from llm.checkpoint.manager import CHECKPOINTS
from llm.config import Config, ModelConfig, load_config
from llm.model.quantized import MANIFEST

RUN_FIELDS = (
    "embed_dropout",
    "attn_dropout",
    "resid_dropout",
    "dtype",
    "remat",
    "scan_layers",
    "attention_impl",
)


def warm_start_config(cfg: Config) -> Config:
    """`cfg` with the model and tokenizer of `train.init_from` (unchanged without it)."""
    t = cfg.train
    if t.init_from is None:
        return cfg
    own = Path(t.run_dir) / "config.yaml"
    if t.resume and own.is_file() and any((Path(t.run_dir) / CHECKPOINTS).glob("[0-9]*")):
        source = load_config(own)  # the run's record of what it started from
    else:
        if quantization_of(t.init_from):
            raise ValueError(
                f"train.init_from: {t.init_from} holds a quantized model ({MANIFEST}); training "
                "updates float weights: start from the float model it was made from (QLoRA, "
                "peft.method=qlora, stores a frozen base quantized by itself)"
            )
        source = model_config_of(t.init_from)
    for line in overridden(cfg.model, source.model):
        print(f"note: train.init_from: {line}", file=sys.stderr)
    model = dataclasses.replace(source.model, **{f: getattr(cfg.model, f) for f in RUN_FIELDS})
    data = dataclasses.replace(cfg.data, tokenizer=source.data.tokenizer)
    return dataclasses.replace(cfg, model=model, data=data)


def overridden(run: ModelConfig, source: ModelConfig) -> list[str]:
    """The architecture fields the run's config set (not default) that the source replaces."""
    default = ModelConfig()
    out = []
    for f in dataclasses.fields(ModelConfig):
        mine, theirs = getattr(run, f.name), getattr(source, f.name)
        if f.name not in RUN_FIELDS and mine != theirs and mine != getattr(default, f.name):
            out.append(f"model.{f.name}={mine!r} is replaced by the source's {theirs!r}")
    return out

"""An imported model on disk: config, params and tokenizer side by side.

    OUT_DIR/
      config.yaml            the full Config (`llm.config.save_config`); data.tokenizer names
                             OUT_DIR/tokenizer.json
      params/                the params pytree, an orbax `StandardCheckpointer` directory
      tokenizer.json         Hugging Face tokenizer (copied, or built from GGUF metadata)
      tokenizer_config.json  special tokens and the Jinja chat template, when the source had one
      source.json            where the weights came from and which stored tensors were unused
      quantization.json      only for a quantized model (`llm quantize`, a GGUF import keeping
                             its blocks): the static fields of each QArray (llm/model/quantized.py)

The params are saved without optimiser state: an import is a starting point for evaluation,
generation or fine-tuning (`train.init_from`), not a paused training run. Reading this layout
(and run directories, and Hugging Face directories) is `llm.checkpoint.load_model`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from llm.config import Config, DataConfig, ModelConfig, TrainConfig, load_config, save_config
from llm.model import quantized
from llm.typing import PyTree

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def make_config(
    model: ModelConfig, tokenizer: Path | str, data: DataConfig | None = None
) -> Config:
    """A full Config around an imported ModelConfig (training sections left at defaults; the
    data section `data`, e.g. the source model's corpus, or the defaults) whose tokenizer is
    the file `tokenizer` or a built-in name ("byte")."""
    train = TrainConfig()
    train = dataclasses.replace(train, seq_len=min(train.seq_len, model.max_seq_len))
    spec = str(tokenizer.absolute()) if isinstance(tokenizer, Path) else tokenizer
    data = dataclasses.replace(data or DataConfig(), tokenizer=spec)
    return Config(model=model, train=train, data=data)


def save_model(
    out_dir: str | Path,
    model: ModelConfig,
    params: PyTree,
    *,
    tokenizer_files: dict[str, Path | str | bytes],
    source: dict[str, Any],
    data: DataConfig | None = None,
) -> Config:
    """Writes an imported model directory; `tokenizer_files` maps file name -> path or bytes.
    `data`: the data section to keep (a model derived from a run: `llm quantize`, `llm
    prune`). No tokenizer files means the built-in "byte" tokenizer."""
    import jax
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    if (out / "params").exists():
        raise FileExistsError(f"{out / 'params'} already exists; choose an empty OUT_DIR")
    if not tokenizer_files and data is not None and data.tokenizer != "byte":
        raise ValueError(f"save_model: no tokenizer files given for tokenizer {data.tokenizer!r}")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in tokenizer_files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            shutil.copyfile(content, out / name)
    if tokenizer_files:
        tok = "tokenizer.json" if "tokenizer.json" in tokenizer_files else "tokenizer.model"
        cfg = make_config(model, out / tok, data)
    else:
        cfg = make_config(model, "byte", data)
    save_config(cfg, out / "config.yaml")
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    spec = quantized.manifest(params)
    if spec:
        (out / quantized.MANIFEST).write_text(json.dumps(spec, indent=1) + "\n")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", jax.tree.map(jax.numpy.asarray, quantized.storable(params)))
    checkpointer.wait_until_finished()
    return cfg


def tokenizer_dir(model_dir: str | Path) -> Path | None:
    """Directory holding the tokenizer files of a model or run directory (None: "byte")."""
    path = Path(model_dir)
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return path
    spec = Path(load_config(path / "config.yaml").data.tokenizer)
    if spec.is_file():
        return spec.parent
    return spec if spec.is_dir() else None


def tokenizer_files_of(model_dir: str | Path, cfg: Config) -> dict[str, Path]:
    """{name: path} of the tokenizer files a model derived from `model_dir` (a quantized or
    pruned copy) gets: {} for the built-in byte tokenizer, ValueError if another has none."""
    if cfg.data.tokenizer == "byte":
        return {}
    tok_dir = tokenizer_dir(model_dir)
    files = {n: tok_dir / n for n in TOKENIZER_FILES if tok_dir and (tok_dir / n).is_file()}
    if not files:
        raise ValueError(f"{model_dir}: tokenizer {cfg.data.tokenizer!r} has no tokenizer file "
                         "to copy into a model directory")  # fmt: skip
    return files

"""An imported model on disk: config, params and tokenizer side by side.

    OUT_DIR/
      config.yaml            the full Config (`llm.config.save_config`); data.tokenizer names
                             OUT_DIR/tokenizer.json
      params/                the params pytree, an orbax `StandardCheckpointer` directory
      tokenizer.json         Hugging Face tokenizer (copied, or built from GGUF metadata)
      tokenizer_config.json  special tokens and the Jinja chat template, when the source had one
      source.json            where the weights came from and which stored tensors were unused

The params are saved without optimiser state: an import is a starting point for evaluation,
generation or fine-tuning, not a paused training run. `load_model` also reads training run
directories (`RUN_DIR/checkpoints/<step>/`), so `llm convert to-hf` takes either.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from llm.config import Config, DataConfig, ModelConfig, TrainConfig, load_config, save_config
from llm.typing import PyTree

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def make_config(model: ModelConfig, tokenizer_path: Path) -> Config:
    """A full Config around an imported ModelConfig (training sections left at defaults)."""
    train = TrainConfig()
    train = dataclasses.replace(train, seq_len=min(train.seq_len, model.max_seq_len))
    data = DataConfig(tokenizer=str(tokenizer_path.absolute()))
    return Config(model=model, train=train, data=data)


def save_model(
    out_dir: str | Path,
    model: ModelConfig,
    params: PyTree,
    *,
    tokenizer_files: dict[str, Path | str | bytes],
    source: dict[str, Any],
) -> Config:
    """Writes an imported model directory; `tokenizer_files` maps file name -> path or bytes."""
    import jax
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    if (out / "params").exists():
        raise FileExistsError(f"{out / 'params'} already exists; choose an empty OUT_DIR")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in tokenizer_files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            shutil.copyfile(content, out / name)
    tok = "tokenizer.json" if "tokenizer.json" in tokenizer_files else "tokenizer.model"
    cfg = make_config(model, out / tok)
    save_config(cfg, out / "config.yaml")
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", jax.tree.map(jax.numpy.asarray, params))
    checkpointer.wait_until_finished()
    return cfg


def load_model(model_dir: str | Path) -> tuple[Config, PyTree, Any]:
    """(config, params, tokenizer) of an imported model directory or a training run."""
    from llm.model import abstract_params
    from llm.tokenizers import load_tokenizer

    path = Path(model_dir).absolute()
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a model directory: config.yaml is missing")
    if not (path / "params").is_dir():
        if (path / "checkpoints").is_dir():
            from llm.train.evaluate import load_run

            cfg, params, tokenizer, _ = load_run(str(path))
            return cfg, params, tokenizer
        raise FileNotFoundError(f"{path}: neither params/ (import) nor checkpoints/ (run)")
    import orbax.checkpoint as ocp

    cfg = load_config(path / "config.yaml")
    for name in ("tokenizer.json", "tokenizer.model"):  # the directory may have moved
        if (path / name).is_file():
            cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, tokenizer=str(path / name))
            )
            break
    params = ocp.StandardCheckpointer().restore(path / "params", abstract_params(cfg.model))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if _has_chat_template(path):  # the model's own template drives apply_chat and chat stops
        from llm.interop.chat_template import ChatTemplate

        tokenizer.chat_template = ChatTemplate.from_dir(path)
    return cfg, params, tokenizer


def _has_chat_template(path: Path) -> bool:
    config = path / "tokenizer_config.json"
    return config.is_file() and "chat_template" in json.loads(config.read_text())


def tokenizer_dir(model_dir: str | Path) -> Path | None:
    """Directory holding the tokenizer files of a model or run directory (None: "byte")."""
    path = Path(model_dir)
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return path
    spec = Path(load_config(path / "config.yaml").data.tokenizer)
    if spec.is_file():
        return spec.parent
    return spec if spec.is_dir() else None

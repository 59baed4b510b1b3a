"""Our model -> a Hugging Face directory that `transformers` loads with `from_pretrained`.

Writes `config.json` (transformers 5 layout), the weights as safetensors (one file, or
shards of at most `max_shard_bytes` plus `model.safetensors.index.json`), and the tokenizer
files next to the model. Tensors are converted and written shard by shard, so at most one
shard is held in memory beside the params.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import ModelConfig
from llm.interop.hf_config import hf_config_from_model
from llm.interop.hf_weights import hf_tensors
from llm.typing import PyTree

SAFETENSORS_METADATA = {"format": "pt"}  # transformers refuses files without a format tag


def export_hf(
    cfg: ModelConfig,
    params: PyTree,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Writes config.json, safetensors and tokenizer files; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = {"bos": None, "eos": None, "pad": None}
    if tokenizer is not None:
        ids = {k: getattr(tokenizer, f"{k}_id") for k in ids}
    hf_cfg = hf_config_from_model(cfg, ids)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    _write_shards(cfg, params, out, max_shard_bytes)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    return out


def _write_shards(cfg: ModelConfig, params: PyTree, out: Path, max_bytes: int) -> None:
    from safetensors.numpy import save_file

    shards: list[list[str]] = []
    current: dict[str, np.ndarray] = {}
    size = total = 0
    for name, array in hf_tensors(cfg, params):
        if current and size + array.nbytes > max_bytes:
            shards.append(_flush(save_file, current, out, len(shards)))
            total += size
            current, size = {}, 0
        current[name] = array
        size += array.nbytes
    shards.append(_flush(save_file, current, out, len(shards)))
    total += size
    if len(shards) == 1:
        (out / "model-shard-0.safetensors").rename(out / "model.safetensors")
        return
    weight_map = {}
    for k, names in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        path = out / final
        (out / f"model-shard-{k}.safetensors").rename(path)
        weight_map |= dict.fromkeys(names, final)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _flush(save_file, tensors: dict[str, np.ndarray], out: Path, k: int) -> list[str]:
    save_file(tensors, str(out / f"model-shard-{k}.safetensors"), metadata=SAFETENSORS_METADATA)
    return list(tensors)

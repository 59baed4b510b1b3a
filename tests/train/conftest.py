"""Tiny configs and helpers shared by the training tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from train_fixtures import tiny_config


@pytest.fixture
def tiny(tmp_path: Path):
    return lambda *overrides: tiny_config(tmp_path / "run", *overrides)

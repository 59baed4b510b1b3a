"""Fixtures of the interop tests: one tiny random Hugging Face model per architecture."""

from __future__ import annotations

import pytest
from hf_models import ARCHS, make_hf_model, save_hf


@pytest.fixture(scope="module", params=ARCHS)
def hf_model_dir(request, tmp_path_factory):
    """(arch, torch model, directory it was saved to) for each architecture."""
    model = make_hf_model(request.param)
    path = save_hf(model, tmp_path_factory.mktemp(f"hf_{request.param}"))
    return request.param, model, path

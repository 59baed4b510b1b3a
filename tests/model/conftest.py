"""Shared tiny model configs, inputs and a parameter cache for the model tests.

XLA on CPU takes about half a second to compile each threefry random draw, so initialising
a fresh model costs seconds. Tests that only need *some* parameters of the right structure
share them through `params_for`, keyed by the abstract parameter shapes.
"""

import dataclasses

import jax
import pytest

from llm.config import ModelConfig
from llm.model import abstract_params, init_params

BASE = ModelConfig(
    vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32, init_std=0.1
)

_CACHE: dict = {}


def make_cfg(**overrides) -> ModelConfig:
    return dataclasses.replace(BASE, **overrides)


def params_for(cfg: ModelConfig):
    """Parameters (seed 0) for any config with this parameter structure, initialised once."""
    abstract = abstract_params(cfg)
    signature = (
        jax.tree.structure(abstract),
        tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract)),
    )
    if signature not in _CACHE:
        _CACHE[signature] = init_params(cfg, jax.random.key(0))
    return _CACHE[signature]


@pytest.fixture(scope="session")
def tokens_BL():
    return jax.random.randint(jax.random.key(7), (2, 12), 0, BASE.vocab_size)

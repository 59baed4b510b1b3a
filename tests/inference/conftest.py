"""A tiny model shared by the inference tests (built once: compiles dominate on CPU)."""

import jax
import pytest

from llm.config import ModelConfig
from llm.inference import Engine
from llm.model import init_params
from llm.tokenizers.byte import ByteTokenizer

TINY = ModelConfig(
    vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
    pos_encoding="rope", norm="rmsnorm", activation="swiglu", init_std=0.2,
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_params():
    return init_params(TINY, jax.random.key(0))


@pytest.fixture(scope="session")
def engine(tiny_params):
    return Engine(TINY, tiny_params, ByteTokenizer(), max_len=48)

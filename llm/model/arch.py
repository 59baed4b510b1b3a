"""Which module a model config builds: the one place that maps `model.arch` to a class.

Every architecture is an `nnx.Module` built as `cls(cfg, rngs)` whose `__call__` takes the
Transformer's arguments and returns a `ModelOutput`, with a `logits(hidden_BLD)` output layer
and a `init_cache(cfg, batch, max_len)` static method giving its decoding state (a
`llm.model.cache.Cache`). So `llm.model.forward`, the losses, the train step, checkpoints,
evaluation and generation serve the classical baselines (Bengio's neural n-gram model, RNN /
LSTM / GRU language models) through the same code as the Transformer.
"""

from __future__ import annotations

from flax import nnx

from llm.config import ModelConfig
from llm.model.encdec import EncoderDecoder
from llm.model.ngram_mlp import NeuralNgramLM
from llm.model.recurrent import RecurrentLM
from llm.model.ssm import MambaLM
from llm.model.transformer import Transformer


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
    """The module class of `cfg.arch`."""
    if cfg.arch == "transformer":
        return Transformer
    if cfg.arch == "ngram_mlp":
        return NeuralNgramLM
    if cfg.arch == "mamba":
        return MambaLM
    if cfg.arch == "t5":
        return EncoderDecoder
    return RecurrentLM

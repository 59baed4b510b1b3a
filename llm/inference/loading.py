"""Where a model for generation comes from: a model directory, or a config and a seed.

Directories (a run, an `llm convert` output, a Hugging Face directory) are read with the one
loader, `llm.checkpoint.load_model` (params only, newest or chosen step). A config alone gives
random weights: enough to smoke-test the engine, CLI and server without training anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from llm.checkpoint import LoadedModel, load_model
from llm.config import Config
from llm.model import init_params
from llm.tokenizers import load_tokenizer
from llm.tokenizers.chat import marker_ids
from llm.tokenizers.specials import DEFAULT_SPECIALS


def model_for_serving(checkpoint: str | None, step: int | None, config: Config | None,
                      seed: int = 0) -> LoadedModel:  # fmt: skip
    """The model in directory `checkpoint` if given, else `config` with random weights.

    `.name` is what the server answers to: the directory's name, or "random-init"."""
    if checkpoint is not None:
        return load_model(checkpoint, step)
    if config is None:
        raise ValueError("give --checkpoint RUN_DIR or --config FILE")
    tokenizer = load_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} ids but "
            f"model.vocab_size is {config.model.vocab_size}"
        )
    params = init_params(config.model, jax.random.key(seed))
    return LoadedModel(config, params, tokenizer, 0, "random", Path("random-init"))


def chat_stops(tokenizer: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(stop token ids, stop strings) ending an assistant turn: EOS and the end-of-turn marker
    (one id when the vocabulary has it, else its text); a model's own chat template says
    its own end-of-turn ids."""
    template = getattr(tokenizer, "chat_template", None)
    if template is not None:
        return (*template.stop_ids(), tokenizer.eos_id), ()
    end = marker_ids(tokenizer, DEFAULT_SPECIALS.end_of_turn)
    if len(end) == 1 and end != tokenizer.encode(DEFAULT_SPECIALS.end_of_turn):
        return (tokenizer.eos_id, end[0]), ()
    return (tokenizer.eos_id,), (DEFAULT_SPECIALS.end_of_turn,)

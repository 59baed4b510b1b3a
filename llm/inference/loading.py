"""Where a model for generation comes from: a training run directory, or a config and a seed.

Run directories are read with the trainer's `llm.train.evaluate.load_run` (resolved config,
newest or chosen checkpoint, tokenizer). A config alone gives random weights: enough to
smoke-test the engine, CLI and server without training anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm.config import Config
from llm.tokenizers.chat import marker_ids
from llm.tokenizers.specials import DEFAULT_SPECIALS
from llm.typing import PyTree


@dataclasses.dataclass
class LoadedModel:
    config: Config
    params: PyTree
    tokenizer: Any
    name: str  # what the server answers to (the run directory's name, or "random-init")
    step: int | None  # checkpoint step, None for random weights


def load_model(checkpoint: str | None, step: int | None, config: Config | None,
               seed: int = 0) -> LoadedModel:  # fmt: skip
    """A run's checkpoint if `checkpoint` is given, else `config` with random weights."""
    if checkpoint is not None:
        from llm.train.evaluate import load_run

        cfg, params, tokenizer, found = load_run(checkpoint, step)
        return LoadedModel(cfg, params, tokenizer, Path(checkpoint).resolve().name, found)
    if config is None:
        raise ValueError("give --checkpoint RUN_DIR or --config FILE")
    import jax

    from llm.model import init_params
    from llm.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} ids but "
            f"model.vocab_size is {config.model.vocab_size}"
        )
    params = init_params(config.model, jax.random.key(seed))
    return LoadedModel(config, params, tokenizer, "random-init", None)


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

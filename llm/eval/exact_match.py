"""Exact-match accuracy of instruction records, answered by greedy generation.

Each record (an instruction record or a `messages` conversation ending in an assistant turn,
read by `llm.data.sft.read_records`, so exactly as SFT renders it for training) becomes its
conversation without the final assistant turn, rendered with the model's chat template and
the generation prompt (`<|im_start|>assistant\\n` for ChatML). The model answers greedily
(`llm.inference.Engine`, one sampler: GREEDY) until its end-of-turn token or
`max_new_tokens`, and the answer counts when `normalise(answer) == normalise(reference)`.

`normalise` (the SQuAD answer normalisation of Rajpurkar et al. 2016, arXiv:1606.05250,
without its article and inner-punctuation removal, which would make "The Tempest" equal
"Tempest" and "1 John" collide with "John"):
  * whitespace runs become one space, and leading and trailing whitespace goes;
  * case is folded (`str.casefold`);
  * trailing punctuation is stripped: any run of `. , ; : ! ? ' " ’ ”` and spaces at the end,
    so "Paris." equals "paris", and "Genesis!" equals "Genesis".
Nothing else changes: "The capital is Paris." does not equal "Paris".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from llm.data.sft import read_records
from llm.inference import GREEDY, Engine, StopCriteria
from llm.inference.engine import bucket
from llm.inference.loading import chat_stops
from llm.tokenizers.chat import apply_chat

TRAILING = " .,;:!?'\"’”"  # stripped from the end of an answer before comparing


def normalise(text: str) -> str:
    """The answer as compared: the module docstring gives the rule."""
    return " ".join(text.split()).casefold().rstrip(TRAILING)


@dataclasses.dataclass(frozen=True)
class ExactMatch:
    """Scores of one evaluation, with every prediction for inspection."""

    correct: int
    total: int
    predictions: list[str]  # generated answers, in record order
    references: list[str]  # expected answers, in record order

    @property
    def score(self) -> float:
        return self.correct / self.total


def prompt_and_answer(messages: Sequence[dict[str, str]], where: str) -> tuple[list, str]:
    """(the conversation up to the final assistant turn, that turn's content)."""
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message is not the assistant's answer")
    return list(messages[:-1]), messages[-1]["content"]


def exact_match(
    model_cfg: Any,
    params: Any,
    tokenizer: Any,
    conversations: Sequence[tuple[Sequence[dict[str, str]], str]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> ExactMatch:
    """Greedy answers to every (messages, "file:line") and their normalised exact match."""
    if not conversations:
        raise ValueError("no records to evaluate")
    pairs = [prompt_and_answer(m, where) for m, where in conversations]
    prompts = [apply_chat(tokenizer, p, add_generation_prompt=True) for p, _ in pairs]
    max_len = bucket(max(map(len, prompts)) + max_new_tokens, 8, 1 << 20)
    engine = Engine(model_cfg, params, tokenizer, max_len=max_len)
    stop_ids, stop_strings = chat_stops(tokenizer)
    stop = StopCriteria(max_new_tokens, tuple(stop_ids), tuple(stop_strings))
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        answers += [c.text for c in engine.generate(chunk, GREEDY, stop)]
    references = [a for _, a in pairs]
    correct = sum(normalise(a) == normalise(r) for a, r in zip(answers, references, strict=True))
    return ExactMatch(correct, len(pairs), answers, references)


def exact_match_file(model: Any, spec: str, *, limit: int | None = None, **kwargs) -> ExactMatch:
    """`exact_match` of a loaded model (`llm.checkpoint.load_model`) on the records of `spec`:
    all of them, or the first `limit` (in file order)."""
    records = read_records(spec)
    if limit is not None:
        records = records[:limit]
    return exact_match(model.config.model, model.params, model.tokenizer, records, **kwargs)

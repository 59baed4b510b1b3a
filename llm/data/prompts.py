"""RL prompts (`data.format=prompts`): JSONL records -> chat-rendered prompt ids, split, ordered.

One JSON object per line, a prompt as plain text or as a conversation that ends before the
assistant's turn, and optionally the answer a programmatic reward checks:

    {"prompt": "What is 12 + 7?", "answer": "19"}
    {"messages": [{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": "What is 12 + 7?"}], "answer": "19"}

A prompt is rendered with the tokenizer's chat template and the generation prompt that opens
the assistant's turn (`apply_chat(..., add_generation_prompt=True)`), exactly what SFT data
(llm/data/sft.py) puts before the trained assistant tokens, so the policy continues the
format it was fine-tuned on. The held-out split is `llm.data.sft.split_examples` (a seeded
split by record, `data.val_fraction`); the RL loop takes train prompts in a seeded order that
is a pure function of the iteration (`PromptOrder`), so a resumed run draws the same prompts.

`arithmetic_records` writes the verifiable prompts `llm data arithmetic` makes: "What is a op
b?" with the integer answer, which the "arithmetic" reward (llm/align/rewards.py) checks.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.sft import check_template, checked_messages, split_examples
from llm.data.sources import SourceError, jsonl_records
from llm.tokenizers.chat import apply_chat

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One rendered prompt: its ids (generation prompt included), text, answer and origin."""

    ids: tuple[int, ...]
    text: str  # the user's text: the record's "prompt" or its last user message
    messages: tuple[dict[str, str], ...]  # the conversation before the assistant's turn
    answer: str | None  # what a verifiable reward checks; None when the record has none
    origin: str  # "file:line"


def parse_record(record: Any, where: str) -> tuple[list[dict[str, str]], str | None]:
    """(messages before the assistant's turn, answer) of one record; bad records raise."""
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if ("prompt" in record) == ("messages" in record):
        raise SourceError(
            f"{where}: a prompt record has exactly one of 'prompt' (text) or 'messages' "
            f"(keys: {sorted(record)[:10]})"
        )
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, str | int | float):
        raise SourceError(f"{where}: 'answer' is {type(answer).__name__}, not a string")
    answer = None if answer is None else str(answer)
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise SourceError(f"{where}: 'prompt' must be a non-empty string")
        return [{"role": "user", "content": record["prompt"]}], answer
    messages = record["messages"]
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        if messages[-1].get("role") == "assistant":
            raise SourceError(
                f"{where}: the last message is the assistant's; a prompt ends before the "
                "turn the policy generates"
            )
    # sft's checks (roles, keys, strings) want an assistant turn: give it an empty one
    checked = checked_messages([*messages, {"role": "assistant", "content": ""}], where)
    return checked[:-1], answer


def read_prompt_records(spec: str) -> list[tuple[list[dict[str, str]], str | None, str]]:
    """(messages, answer, "file:line") of every record under `spec`."""
    records = jsonl_records(spec, "prompt")
    return [(*parse_record(record, where), where) for record, where in records]


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], answer, where) -> Prompt:
    ids = apply_chat(tokenizer, messages, add_generation_prompt=True)
    users = [m["content"] for m in messages if m["role"] == "user"]
    text = users[-1] if users else ""
    return Prompt(tuple(int(i) for i in ids), text, tuple(messages), answer, where)


def load_prompts(cfg: Any, split: str, tokenizer: Any) -> list[Prompt]:
    """The prompts of `split` ("train" | "validation") of `data.corpus`, rendered."""
    if split not in SPLITS:
        raise ValueError(f"data.format=prompts has splits {SPLITS}, not {split!r}")
    data = cfg.data
    check_template(tokenizer, data.tokenizer)
    records = read_prompt_records(data.corpus)
    train_idx, val_idx = split_examples(len(records), data.val_fraction, data.seed)
    chosen = train_idx if split == "train" else val_idx
    if len(chosen) == 0:
        raise ValueError(
            f"data.val_fraction={data.val_fraction} leaves no {split} prompt of {len(records)} "
            f"in {data.corpus}"
        )
    return [render_prompt(tokenizer, *records[i]) for i in chosen]


class PromptOrder:
    """Train prompts in a seeded order, epoch after epoch: `take(iteration, n)` is the n
    prompts of that iteration, a pure function of (seed, iteration), so resuming at an
    iteration draws exactly what the uninterrupted run drew."""

    def __init__(self, prompts: Sequence[Prompt], seed: int):
        if not prompts:
            raise ValueError("no train prompts")
        self.prompts, self.seed = list(prompts), seed

    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def take(self, iteration: int, n: int) -> list[Prompt]:
        out, N = [], len(self.prompts)
        for k in range(iteration * n, (iteration + 1) * n):
            out.append(self.prompts[int(self._epoch(k // N)[k % N])])
        return out


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_records(
    n: int, seed: int, max_operand: int = 20, ops: Sequence[str] = ("+", "-")
) -> list[dict[str, str]]:
    """`n` distinct prompts "What is a op b?" with their integer answers (operands in
    [0, max_operand]); fewer distinct pairs than `n` is an error, not a repeat."""
    bad = [op for op in ops if op not in OPS]
    if bad or not ops:
        raise ValueError(f"ops {list(ops)}: each must be one of {sorted(OPS)}")
    possible = (max_operand + 1) ** 2 * len(set(ops))
    if n > possible:
        raise ValueError(f"{n} distinct prompts asked, but operands <= {max_operand} and ops "
                         f"{list(ops)} make only {possible}")  # fmt: skip
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        out.append({"prompt": f"What is {a} {op} {b}?", "answer": str(OPS[op](a, b))})
    return out


def write_arithmetic(out_dir: Path, n: int, seed: int, max_operand: int, ops) -> Path:
    """`out_dir/arithmetic.jsonl` of `arithmetic_records`; train with data.corpus=<that file>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "arithmetic.jsonl"
    records = arithmetic_records(n, seed, max_operand, ops)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path

"""Sequence-level knowledge distillation (Kim & Rush 2016, arXiv:1606.07947): the teacher's
own answers become the student's fine-tuning data.

    sequence_kd(teacher_cfg, params, tokenizer, conversations, "kd.jsonl")
    python train.py --config configs/sft_tiny.yaml data.corpus=kd.jsonl   # plain SFT on it

The teacher answers each conversation greedily through the inference engine (its chat
template, stopped at the end of its turn), and each answer is appended as the assistant turn
of an SFT chat record (`{"messages": [...]}`, llm/data/sft.py). Kim & Rush decode with beam
search (width 5); greedy is width 1. Logit distillation is `loss.name: distill`
(llm/train/losses/distill.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm.config import ModelConfig
from llm.inference.engine import Engine, StopCriteria
from llm.inference.loading import chat_stops
from llm.inference.sampling import GREEDY
from llm.tokenizers.chat import apply_chat
from llm.typing import PyTree


def sequence_kd(
    teacher: ModelConfig,
    params: PyTree,
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    out: str | Path,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> int:
    """The teacher's greedy answer to each conversation (ending before the assistant's turn)
    appended as the assistant turn, written as SFT chat JSONL to `out`; returns the count."""
    prompts = [apply_chat(tokenizer, list(c), add_generation_prompt=True) for c in conversations]
    longest = max(map(len, prompts), default=0) + max_new_tokens
    if longest > teacher.max_seq_len:
        raise ValueError(f"a prompt plus max_new_tokens={max_new_tokens} is {longest} tokens, "
                         f"over the teacher's context of {teacher.max_seq_len}")  # fmt: skip
    engine = Engine(teacher, params, tokenizer, max_len=longest)
    stop = StopCriteria(max_new_tokens, *chat_stops(tokenizer))
    with Path(out).open("w") as f:
        for start in tqdm(range(0, len(prompts), batch_size), desc="sequence KD", unit="batch"):
            done = engine.generate(prompts[start : start + batch_size], GREEDY, stop)
            for conv, c in zip(conversations[start : start + batch_size], done, strict=True):
                messages = [*map(dict, conv), {"role": "assistant", "content": c.text.strip()}]
                f.write(json.dumps({"messages": messages}) + "\n")
    return len(prompts)

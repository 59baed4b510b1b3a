"""Chat data for the SFT tests: conversations, a ChatML tokenizer, JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.interop.hf_models import CHATML, tiny_tokenizer_json

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "The quick brown fox?"},
    {"role": "assistant", "content": "Jumps over the lazy dog."},
]


def chatml_tokenizer(folder: Path, template: str = CHATML):
    """A byte-level BPE whose model directory carries a ChatML template (as SmolLM2's does)."""
    from llm.interop.chat_template import ChatTemplate
    from llm.tokenizers.hf import HFTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tiny_tokenizer_json())
    config = dict(chat_template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer(folder / "tokenizer.json")
    tok.chat_template = ChatTemplate.from_dir(folder)
    return tok


def toy_chats(n: int) -> list[dict]:
    """`n` distinct short chats (numbered, some with a system prompt, some instruction-style)."""
    records = []
    for i in range(n):
        if i % 3 == 2:
            records.append({"instruction": f"Echo {i}.", "input": "", "output": f"{i} {i}"})
            continue
        messages = [{"role": "system", "content": "Be brief."}] if i % 2 else []
        messages += [
            {"role": "user", "content": f"Count {i}"},
            {"role": "assistant", "content": f"{i} {i + 1} {i + 2}"},
        ]
        records.append({"messages": messages})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path

"""Hugging Face chat templates (Jinja, from tokenizer_config.json) -> token ids, safely.

Imported models were trained with their own chat format (SmolLM2: ChatML,
`<|im_start|>user\\n...<|im_end|>`), not ours, so their template must be used verbatim.
The template is rendered in Jinja's sandbox with every message content replaced by a unique
placeholder; the rendered text is then split at the placeholders. Template text is encoded
with its special tokens recognised, message contents as plain text, so a user who types
`<|im_start|>` gets the characters, never the control token (the house rule of
`llm.tokenizers.chat`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_PLACEHOLDER = "\x00msg{}\x00"
_PLACEHOLDER_RE = re.compile("\x00msg(\\d+)\x00")


class ChatTemplate:
    """A Jinja chat template with the special tokens it may emit."""

    def __init__(self, template: str, config: Mapping[str, Any], specials: Mapping[str, int]):
        """`specials`: special token text -> id (the `added_tokens` marked special)."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        self.source = template
        self._template = env.from_string(template)
        self._config = dict(config)
        self.specials = dict(specials)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ChatTemplate:
        """From a model directory's tokenizer_config.json and tokenizer.json."""
        tokenizer_json = json.loads((Path(model_dir) / "tokenizer.json").read_text())
        added = tokenizer_json.get("added_tokens", [])
        specials = {t["content"]: t["id"] for t in added if t.get("special")}
        path = Path(model_dir) / "tokenizer_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the model has no chat template")
        config = json.loads(path.read_text())
        if not isinstance(config.get("chat_template"), str):
            raise ValueError(f"{path}: no chat_template string")
        return cls(config["chat_template"], config, specials)

    def stop_ids(self) -> list[int]:
        """Ids that end an assistant turn: the configured eos token (SmolLM2: <|im_end|>)."""
        eos = self._special("eos_token")
        return [self.specials[eos]] if eos in self.specials else []

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self._special("bos_token"),
            eos_token=self._special("eos_token"),
        )

    def _special(self, key: str) -> str:
        value = self._config.get(key) or ""
        return value["content"] if isinstance(value, dict) else value

    def encode(
        self, tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[int]:
        """Token ids of the rendered conversation; contents are never parsed for specials."""
        held = [{**m, "content": _PLACEHOLDER.format(k)} for k, m in enumerate(_checked(messages))]
        text = self.render(held, add_generation_prompt)
        pieces = _PLACEHOLDER_RE.split(text)
        seen = [int(k) for k in pieces[1::2]]
        if sorted(seen) != list(range(len(messages))):
            raise ValueError(
                f"chat template used message contents {seen}, expected each of "
                f"0..{len(messages) - 1} exactly once"
            )
        ids: list[int] = []
        for j, piece in enumerate(pieces):
            if j % 2:
                ids += tokenizer.encode(messages[int(piece)]["content"])
            else:
                ids += _encode_with_specials(tokenizer, piece, self.specials)
        return ids


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def _checked(messages: Sequence[Mapping[str, str]]) -> Sequence[Mapping[str, str]]:
    for k, m in enumerate(messages):
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{k}] needs string 'role' and 'content', got {m!r}")
    return messages


def _encode_with_specials(tokenizer: Any, text: str, specials: Mapping[str, int]) -> list[int]:
    """Template text: the special tokens it contains become their ids, the rest is encoded."""
    if not specials:
        return tokenizer.encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for j, part in enumerate(re.split(pattern, text)):
        if j % 2:
            ids.append(specials[part])
        elif part:
            ids += tokenizer.encode(part)
    return ids

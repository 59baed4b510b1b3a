"""Chat formatting: messages -> token ids with role markers, one simple documented template.

    <|bos|> <|system|>You are terse.<|end|> <|user|>Hi<|end|> <|assistant|>Hello<|end|>

Each marker is one special id when the tokenizer has it (ours do: see `SpecialTokens`);
otherwise (the byte tokenizer, foreign vocabularies) the marker text is encoded as ordinary
text, which still delimits turns unambiguously for a model trained on it. Message contents are
always encoded as plain text, so a user cannot inject a marker by typing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llm.tokenizers.base import Tokenizer
from llm.tokenizers.specials import DEFAULT_SPECIALS, SpecialTokens

ROLES = ("system", "user", "assistant")


def marker_ids(tok: Tokenizer, marker: str) -> list[int]:
    """The special id of `marker` if the vocabulary has it, else its text encoding."""
    lookup = getattr(tok, "token_to_id", None)
    i = lookup(marker) if lookup else None
    return [i] if i is not None else tok.encode(marker)


def apply_chat(
    tok: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    specials: SpecialTokens = DEFAULT_SPECIALS,
) -> list[int]:
    """BOS, then each message as <|role|> content <|end|>; optionally open an assistant turn.

    A tokenizer that carries its model's own template (`tok.chat_template`, set when an
    imported model directory has one, e.g. SmolLM2's ChatML) is rendered with that instead.
    """
    template = getattr(tok, "chat_template", None)
    if template is not None:
        return template.encode(tok, messages, add_generation_prompt=add_generation_prompt)
    ids = [tok.bos_id]
    end = marker_ids(tok, specials.end_of_turn)
    for k, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{k}]: role {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{k}]: content must be a string, got {type(content)}")
        ids += marker_ids(tok, getattr(specials, role)) + tok.encode(content) + end
    if add_generation_prompt:
        ids += marker_ids(tok, specials.assistant)
    return ids

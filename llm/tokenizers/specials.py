"""Special tokens: the names we give them, and how we find them in someone else's vocabulary.

Our trained tokenizers put their special tokens first (ids 0, 1, ...): padding, beginning and end
of document, then the chat-role markers used by `llm.tokenizers.chat`. Files from elsewhere use
other names ("<s>", "[CLS]", "<|endoftext|>"), so `find_special` tries the usual spellings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Spellings tried, in order, when a vocabulary did not come from us.
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "</s>", "<|im_end|>")
BOS_NAMES = ("<|bos|>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>", "<|im_start|>")
EOS_NAMES = ("<|eos|>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>")


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens our trainers reserve, in id order."""

    pad: str = "<|pad|>"  # padding id of packed rows
    bos: str = "<|bos|>"  # start of a document
    eos: str = "<|eos|>"  # end of a document
    system: str = "<|system|>"  # chat: a system turn follows
    user: str = "<|user|>"  # chat: a user turn follows
    assistant: str = "<|assistant|>"  # chat: an assistant turn follows
    end_of_turn: str = "<|end|>"  # chat: closes any turn

    def as_list(self) -> list[str]:
        return [
            self.pad,
            self.bos,
            self.eos,
            self.system,
            self.user,
            self.assistant,
            self.end_of_turn,
        ]


DEFAULT_SPECIALS = SpecialTokens()


def added_token(token_id: int, content: str) -> dict:
    """A special token's entry in a Hugging Face `tokenizer.json` "added_tokens" list."""
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def find_special(tok_to_id: Mapping[str, int], names: Sequence[str], what: str, where: str) -> int:
    """Id of the first of `names` present; a clear error naming the file when none is."""
    for name in names:
        if name in tok_to_id:
            return tok_to_id[name]
    raise ValueError(f"{where}: no {what} token; looked for {', '.join(names)}")


def find_specials(tok_to_id: Mapping[str, int], where: str) -> tuple[int, int, int]:
    """(pad, bos, eos) ids of a vocabulary, each found by `find_special`."""
    return (
        find_special(tok_to_id, PAD_NAMES, "padding", where),
        find_special(tok_to_id, BOS_NAMES, "beginning-of-text", where),
        find_special(tok_to_id, EOS_NAMES, "end-of-text", where),
    )


class VocabLookup:
    """The `Tokenizer` properties of a tokenizer that holds its own `vocab` list and
    `tok_to_id` map, with `_pad`, `_bos`, `_eos` set from `find_specials`."""

    vocab: list[str]
    tok_to_id: dict[str, int]
    _pad: int
    _bos: int
    _eos: int

    vocab_size = property(lambda self: len(self.vocab))
    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)

    def token_to_id(self, token: str) -> int | None:
        return self.tok_to_id.get(token)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

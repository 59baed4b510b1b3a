"""The one tokenizer interface every tokenizer in the package implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, with the special ids the data pipeline and generation rely on.

    `encode` never adds BOS/EOS by itself: the packer decides where documents start and end.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def encode_batch(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode many texts, through the tokenizer's own batched path when it has one."""
    batched = getattr(tok, "encode_batch", None)
    return batched(texts) if batched else [tok.encode(t) for t in texts]

"""Incremental detokenisation with stop strings, for streaming text as tokens arrive.

Two things make the naive "decode each token alone" wrong: a character may span several
tokens (byte-level vocabularies emit UTF-8 piece by piece, decoded as U+FFFD until complete),
and a stop string may span several tokens. So we decode the whole output each time and emit
only the part that is settled: text ending in U+FFFD, or in a prefix of some stop string, is
held back until the next token decides it. A stop string ends the text before it (it is not
part of the output, as in the OpenAI API).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.tokenizers.base import Tokenizer


class TextStream:
    """Feed token ids with `push`; get the settled new text and whether a stop string hit."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()):
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer, self.stops = tokenizer, tuple(stop_strings)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.stopped = False
        self._final: str | None = None

    @property
    def text(self) -> str:
        """The output so far (cut before the stop string once one has appeared)."""
        return self._final if self._final is not None else self.tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        """Adds a token; returns the newly settled text (possibly empty)."""
        if self.stopped:
            raise RuntimeError("push after a stop string ended the text")
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped, self._final = True, text[:cut]
            return self._take(self._final, cut)
        return self._take(text, self._settled(text))

    def finish(self) -> str:
        """Everything not yet handed out (call when generation ends)."""
        text = self.text
        return self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        end = max(end, self.emitted)
        delta, self.emitted = text[self.emitted : end], end
        return delta

    def _find_stop(self, text: str) -> int | None:
        hits = []
        for s in self.stops:
            i = text.find(s, max(0, self.emitted - len(s) + 1))
            if i >= 0:
                hits.append(i)
        return min(hits) if hits else None

    def _settled(self, text: str) -> int:
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1
        for s in self.stops:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        return end

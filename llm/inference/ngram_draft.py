"""Self-drafting by n-gram lookup ("prompt lookup decoding", Saxena, 2023,
github.com/apoorvumang/prompt-lookup-decoding; vLLM's `ngram` speculator).

Text that quotes, edits or summarises its context repeats it: code with its identifiers,
answers that cite the question, a repeated refrain. So the tokens that followed the latest
earlier occurrence of the context's last n tokens are a free guess at what comes next. The
longest n (up to `max_n`) that occurs wins, as a longer match is the more specific evidence;
the most recent occurrence wins, as nearby text is the likelier to be copied.

The proposal is a deterministic function of the context, so as a speculative-decoding drafter
its q is one-hot on each draft (`speculative.accept` with `q_BgV=None`): no model, no cache,
no state. A row without a match proposes nothing, and its round is a plain decode step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from llm.inference.speculative import Proposal
from llm.typing import Array


def ngram_proposal(context: Sequence[int], gamma: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """`gamma` tokens copied from what followed the latest earlier occurrence of the context's
    last n tokens, for the largest n in [min_n, max_n] that occurs; [] when none does.

    "Earlier" means ending before the last token, so at least one token follows the match,
    and the match may overlap the suffix. A match `shift` tokens back says the text repeats
    with period `shift`; when the copy reaches the end of the context it goes on copying
    its own output. Without that, a loop (where the latest match is the one just behind
    the suffix) would propose a single token per round.
    """
    _check(gamma, max_n, min_n)
    c = np.asarray(context, np.int64)
    for n in range(min(max_n, len(c) - 1), min_n - 1, -1):
        windows_WN = np.lib.stride_tricks.sliding_window_view(c[:-1], n)
        hits = np.flatnonzero((windows_WN == c[-n:]).all(axis=1))
        if hits.size:
            shift = len(c) - n - int(hits[-1])
            return np.resize(c[len(c) - shift :], gamma).tolist()
    return []


def _check(gamma: int, max_n: int, min_n: int) -> None:
    if gamma < 1:
        raise ValueError(f"{gamma=} must be >= 1")
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= min_n <= max_n; got {min_n=}, {max_n=}")


class NGramDrafter:
    """The `speculative.Drafter` that proposes `ngram_proposal` of each row's history."""

    max_len = None  # no model, so no context limit of its own

    def __init__(self, max_n: int = 3, min_n: int = 1):
        _check(1, max_n, min_n)
        self.max_n, self.min_n = max_n, min_n

    def start(self, target: object, prompts: object, params: object) -> None:
        """Nothing to prepare: the history is the whole state."""

    def propose(
        self,
        history: Sequence[Sequence[int]],
        last_B: Array,
        s: object,
        limits_B: np.ndarray,
        gamma: int,
    ) -> Proposal:
        drafts_Bg = np.zeros((last_B.shape[0], gamma), np.int32)
        sizes_B = np.zeros(last_B.shape[0], np.int32)
        for b, context in enumerate(history):
            if limits_B[b] > 0:
                d = ngram_proposal(context, int(min(gamma, limits_B[b])), self.max_n, self.min_n)
                drafts_Bg[b, : len(d)], sizes_B[b] = d, len(d)
        return Proposal(jnp.asarray(drafts_Bg), jnp.asarray(sizes_B))

    def commit(self, accepted_B: np.ndarray, lengths_B: Array) -> None:
        """Nothing to roll back."""

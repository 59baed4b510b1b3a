"""Greedy decoding of (source, target) pairs and its exact match, for both model families.

An encoder-decoder (model.arch=t5) decodes with `llm.model.seq2seq_generate` (cross-attention
KV cache) from the start id; a decoder-only model continues the prompt BOS source SEPARATOR,
the layout it was trained on (llm/data/seq2seq.py), with a plain full forward per new token
(`decoder_greedy`: no cache, so it is the reference path, compiled once for a fixed window).
Both stop at EOS. A prediction counts when its decoded text equals the target exactly: the
tasks are rule-based (llm/data/seq2seq_tasks.py), so there is one right answer and no
normalisation.

`seq2seq_samples` is what `llm train` prints after an encoder-decoder run instead of a free
sample: the first validation rows decoded (sources with sentinels shown as <sN>), their
references, the model's greedy output, and for pair data the exact match over those rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.data import make_batches
from llm.data.seq2seq import ENCDEC_ARCHS, SEPARATOR, pair_row
from llm.model import forward, seq2seq_generate
from llm.typing import Array, PyTree


@dataclasses.dataclass(frozen=True)
class PairMatch:
    """Greedy predictions of a pair set and how many equal their target exactly."""

    correct: int
    total: int
    predictions: list[str]

    @property
    def score(self) -> float:
        return self.correct / max(self.total, 1)


def until_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    out = []
    for i in ids:
        if i == eos_id:
            break
        out.append(int(i))
    return out


def render(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of `ids` with sentinel ids (>= the tokenizer's vocabulary) shown as <sN>."""
    parts, run = [], []
    for i in ids:
        if i >= tokenizer.vocab_size:
            parts += [tokenizer.decode(run), f"<s{i - tokenizer.vocab_size}>"]
            run = []
        else:
            run.append(int(i))
    return "".join([*parts, tokenizer.decode(run)])


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "start_id", "eos_id"))
def _generate(cfg, params, enc_BS, seg_BS, *, max_new_tokens, start_id, eos_id) -> Array:
    return seq2seq_generate(cfg, params, enc_BS, seg_BS, max_new_tokens=max_new_tokens,
                            start_id=start_id, eos_id=eos_id)  # fmt: skip


@functools.partial(jax.jit, static_argnums=0)
def _next_tokens(cfg: Any, params: PyTree, window_BL: Array, lengths_B: Array) -> Array:
    """Greedy token after each row's last real position (lengths_B - 1)."""
    logits_BLV = forward(cfg, params, window_BL).logits_BLV
    last_BV = jnp.take_along_axis(logits_BLV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(last_BV, axis=-1).astype(jnp.int32)


def decoder_greedy(
    cfg: Any, params: PyTree, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
    eos_id: int, pad_id: int,
) -> list[list[int]]:  # fmt: skip
    """Each prompt's greedy continuation (up to EOS) by a decoder-only model, batched."""
    L = max(len(p) for p in prompts) + max_new_tokens
    if cfg.pos_encoding == "learned" and L > cfg.max_seq_len:  # the table lookup would clamp
        raise ValueError(
            f"decoder_greedy: the longest prompt plus {max_new_tokens} new tokens is {L} "
            f"tokens, beyond model.max_seq_len={cfg.max_seq_len} (learned positions): shorten "
            "the pairs or use a model with a longer position table"
        )
    window = np.full((len(prompts), L), pad_id, np.int32)
    for r, p in enumerate(prompts):
        window[r, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    done = np.zeros(len(prompts), bool)
    for _ in range(max_new_tokens):
        nxt = np.asarray(_next_tokens(cfg, params, window, lengths))
        write = ~done
        window[np.flatnonzero(write), lengths[write]] = nxt[write]
        done |= nxt == eos_id
        lengths = lengths + write
        if done.all():
            break
    return [until_eos(window[r, len(p) : lengths[r]], eos_id) for r, p in enumerate(prompts)]


def pair_match(
    cfg: Any, params: PyTree, tokenizer: Any, pairs: Sequence[tuple[str, str]], *,
    batch_size: int = 64, max_new_tokens: int | None = None,
) -> PairMatch:  # fmt: skip
    """Greedy exact match of `pairs` under model config `cfg` (either family)."""
    sources = [tokenizer.encode(s) for s, _ in pairs]
    longest = max(len(tokenizer.encode(t)) for _, t in pairs) + 1
    new = max_new_tokens or longest
    predictions: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = sources[start : start + batch_size]
        if cfg.arch in ENCDEC_ARCHS:
            ids = encdec_greedy(cfg, params, tokenizer, chunk, new)
        else:
            sep = tokenizer.encode(SEPARATOR)
            prompts = [[tokenizer.bos_id, *s, *sep] for s in chunk]
            ids = decoder_greedy(cfg, params, prompts, max_new_tokens=new,
                                 eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)  # fmt: skip
        predictions += [tokenizer.decode(i) for i in ids]
    correct = sum(p == t for p, (_, t) in zip(predictions, pairs, strict=True))
    return PairMatch(correct, len(pairs), predictions)


def encdec_greedy(
    cfg: Any, params: PyTree, tokenizer: Any, sources: Sequence[Sequence[int]], new: int
) -> list[list[int]]:
    """Greedy targets (up to EOS) of an encoder-decoder for token `sources`."""
    S = max(len(s) for s in sources)
    rows = [pair_row(s, [], S, 1, start_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                     pad_id=tokenizer.pad_id) for s in sources]  # fmt: skip
    enc = np.stack([r["encoder_inputs"] for r in rows])
    seg = np.stack([r["encoder_segment_ids"] for r in rows])
    out = _generate(cfg, params, enc, seg, max_new_tokens=new, start_id=tokenizer.bos_id,
                    eos_id=tokenizer.eos_id)  # fmt: skip
    return [until_eos(row, tokenizer.eos_id) for row in np.asarray(out)]


def seq2seq_samples(cfg: Any, params: PyTree, tokenizer: Any, n: int) -> list[str]:
    """The first `n` validation rows of `cfg`'s data, decoded greedily by the trained model."""
    batch = next(make_batches(cfg, "validation", tokenizer))
    rows = np.flatnonzero(batch["encoder_segment_ids"][:, 0] > 0)[:n]
    sources = [batch["encoder_inputs"][r][batch["encoder_segment_ids"][r] > 0] for r in rows]
    refs = [until_eos(batch["targets"][r][batch["loss_mask"][r] > 0], tokenizer.eos_id)
            for r in rows]  # fmt: skip
    preds = encdec_greedy(cfg.model, params, tokenizer, sources, batch["targets"].shape[1])
    out = [
        f"source:    {render(tokenizer, s)}\nreference: {render(tokenizer, t)}\n"
        f"model:     {render(tokenizer, p)}"
        for s, t, p in zip(sources, refs, preds, strict=True)
    ]
    hits = sum(t == p for t, p in zip(refs, preds, strict=True))
    return [*out, f"exact match of these {len(rows)} rows: {hits}/{len(rows)}"]

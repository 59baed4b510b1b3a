"""Supervised fine-tuning data: chat JSONL -> tokens with an assistant mask -> packed rows.

One JSON object per line, either a conversation (OpenAI / Hugging Face `messages`) or an
instruction record, which becomes a user turn and an assistant turn:

    {"messages": [{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    {"instruction": "Add.", "input": "2 + 2", "output": "4"}      # "input" is optional

Each example is rendered with the tokenizer's chat template (`llm.tokenizers.apply_chat`): the
model's own when the tokenizer carries one (an imported SmolLM2 speaks ChatML), else ours.

The mask rule: a token is trained exactly when it lies in an assistant turn, from the first
token after the generation prompt that opens the turn (`<|im_start|>assistant\\n` is given at
inference, so it is not learned) through the end-of-turn token that closes it (`<|im_end|>`:
the model must learn to stop). System and user tokens, and template text after the
end-of-turn token (ChatML's newline), are not trained. The span is found by rendering prefixes:
messages[:k] with the generation prompt, and messages[:k + 1]; both must be prefixes of the
full rendering. A template for which they are not cannot be split into turns, and is an error
rather than a guess. (This is TRL's "assistant_only_loss" without `{% generation %}` markers,
which most templates, SmolLM2's included, do not carry.)

Packing: examples are packed whole, in a seeded order, into rows of L tokens (next fit); every
example is its own segment with positions from 0, so attention (built from segment_ids) never
crosses examples, and `loss_mask[t]` is the assistant mask of `targets[t] = inputs[t + 1]`.
An example longer than L is never cut: `data.sft_overlong=error` refuses the data, `skip` drops
such examples and reports how many.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from llm.data.sources import SourceError, jsonl_records, resolve_files
from llm.tokenizers.chat import ROLES, apply_chat, marker_ids
from llm.tokenizers.specials import DEFAULT_SPECIALS

Row = dict[str, np.ndarray]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    """One rendered conversation: token ids, the assistant mask over them, and its origin."""

    ids: np.ndarray  # [n] int32, the rendered conversation
    mask: np.ndarray  # [n] bool, True on assistant tokens (contents and end-of-turn)
    origin: str  # "file:line"


@dataclasses.dataclass(frozen=True)
class SFTReport:
    """What reading and packing saw; `skipped_overlong` is never silent."""

    examples: int  # examples kept
    skipped_overlong: int  # examples longer than the row, dropped under sft_overlong=skip
    longest: int  # tokens of the longest example read (kept or not)
    tokens: int  # tokens of the kept examples
    assistant_tokens: int  # of which trained (assistant mask)
    rows: int  # packed rows
    fill: float  # fraction of row positions holding a token (the rest is padding)


# ---------------------------------------------------------------------------- records


def read_records(spec: str) -> list[tuple[list[dict[str, str]], str]]:
    """(messages, "file:line") of every record under `spec`; bad records raise SourceError."""
    return [(to_messages(record, where), where) for record, where in jsonl_records(spec, "SFT")]


def to_messages(record: Any, where: str) -> list[dict[str, str]]:
    """A record's conversation; instruction records become one user and one assistant turn."""
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return checked_messages(record["messages"], where)
    if "instruction" not in record and "output" not in record:
        keys = sorted(record)[:10]
        raise SourceError(
            f"{where}: record has neither 'messages' nor 'instruction'/'output' (keys: {keys})"
        )
    for key in ("instruction", "output"):
        if key not in record:
            raise SourceError(f"{where}: instruction record is missing key {key!r}")
    fields = {k: record.get(k) or "" for k in ("instruction", "input", "output")}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise SourceError(f"{where}: {key!r} is {type(value).__name__}, not a string")
    prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
    return checked_messages(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}],
        where,
    )


def checked_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise SourceError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SourceError(f"{where}: messages[{k}] is not an object")
        for key in ("role", "content"):
            if key not in m:
                raise SourceError(f"{where}: messages[{k}] is missing key {key!r}")
        if m["role"] not in ROLES:
            raise SourceError(f"{where}: messages[{k}] role {m['role']!r} is not one of {ROLES}")
        if not isinstance(m["content"], str):
            raise SourceError(f"{where}: messages[{k}] content is not a string")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise SourceError(f"{where}: no assistant message, so nothing to train on")
    return out


# -------------------------------------------------------------------------- rendering


def end_of_turn_ids(tokenizer: Any) -> list[list[int]]:
    """The token sequences that close an assistant turn under the tokenizer's template."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return [marker_ids(tokenizer, DEFAULT_SPECIALS.end_of_turn)]
    stop = template.stop_ids()
    if not stop:
        raise ValueError(
            "the chat template's tokenizer_config.json names no eos_token among its special "
            "tokens, so the end of an assistant turn cannot be located"
        )
    return [[i] for i in stop]


def render(tokenizer: Any, messages: Sequence[Mapping[str, str]], where: str = "") -> Example:
    """Token ids of the conversation and the mask of its assistant spans (the module's rule)."""
    full = apply_chat(tokenizer, messages)
    mask = np.zeros(len(full), bool)
    stops = end_of_turn_ids(tokenizer)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = apply_chat(tokenizer, messages[:k], add_generation_prompt=True)
        after = apply_chat(tokenizer, messages[: k + 1])
        for name, prefix, whole in (("prompt", before, after), ("turn", after, full)):
            if whole[: len(prefix)] != prefix:
                raise ValueError(
                    f"{where}: the chat template is not prefix-stable at message {k}: the "
                    f"{name} rendered alone is not a prefix of the longer rendering, so the "
                    "assistant tokens cannot be located"
                )
        end = last_stop_end(after, len(before), stops)
        if end is None:
            raise ValueError(
                f"{where}: assistant message {k} rendered without an end-of-turn token {stops}"
            )
        mask[len(before) : end] = True
    return Example(np.asarray(full, np.int32), mask, where)


def last_stop_end(ids: list[int], start: int, stops: list[list[int]]) -> int | None:
    """The index just after the last occurrence of any stop sequence in ids[start:]."""
    for end in range(len(ids), start, -1):
        if any(end - len(s) >= start and ids[end - len(s) : end] == s for s in stops):
            return end
    return None


_LAST: list = []  # [(files key, tokenizer, examples)]: the last corpus rendered


def rendered_examples(spec: str, tokenizer: Any) -> list[Example]:
    """Every record of `spec` rendered; the last result is kept, since validation asks again
    at every evaluation and a Jinja template renders about 1 ms per conversation."""
    files = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in resolve_files(spec))
    if _LAST and _LAST[0][0] == files and _LAST[0][1] is tokenizer:
        return _LAST[0][2]
    examples = [render(tokenizer, messages, where) for messages, where in read_records(spec)]
    _LAST[:] = [(files, tokenizer, examples)]
    return examples


# ---------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> list[Row]:
    """Rows of whole examples in the given order (next fit); each example is at most L long."""
    rows, current, used = [], [], 0
    for ex in examples:
        if len(ex.ids) > seq_len:
            raise ValueError(f"{ex.origin}: {len(ex.ids)} tokens do not fit a row of {seq_len}")
        if used + len(ex.ids) > seq_len:
            rows.append(build_row(current, seq_len, pad_id))
            current, used = [], 0
        current.append(ex)
        used += len(ex.ids)
    if current:
        rows.append(build_row(current, seq_len, pad_id))
    return rows


def build_row(examples: Sequence[Example], seq_len: int, pad_id: int) -> Row:
    """One row: segments 1..k, positions from 0 per example, the mask of each next token."""
    row = padding_row(seq_len, pad_id)
    t = 0
    for segment, ex in enumerate(examples, 1):
        n = len(ex.ids)
        row["inputs"][t : t + n] = ex.ids
        row["segment_ids"][t : t + n] = segment
        row["positions"][t : t + n] = np.arange(n)
        row["targets"][t : t + n - 1] = ex.ids[1:]
        row["loss_mask"][t : t + n - 1] = ex.mask[1:]
        t += n
    return row


def padding_row(seq_len: int, pad_id: int) -> Row:
    pad = np.full(seq_len, pad_id, np.int32)
    zeros = np.zeros(seq_len, np.int32)
    return {
        "inputs": pad,
        "targets": pad.copy(),
        "segment_ids": zeros,
        "positions": zeros.copy(),
        "loss_mask": np.zeros(seq_len, np.float32),
    }


# ----------------------------------------------------------------------------- splits


def split_examples(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) example indices: a seeded split by example, train in seeded order."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    return order[n_val:], np.sort(order[:n_val])


def drop_overlong(
    examples: Sequence[Example], seq_len: int, policy: str
) -> tuple[list[Example], int]:
    """The examples that fit a row, and how many did not; under policy 'error' none may not."""
    long = [ex for ex in examples if len(ex.ids) > seq_len]
    if long and policy == "error":
        worst = max(long, key=lambda ex: len(ex.ids))
        raise ValueError(
            f"{len(long)} of {len(examples)} SFT examples are longer than train.seq_len="
            f"{seq_len} (longest: {len(worst.ids)} tokens at {worst.origin}); examples are "
            "never cut: raise train.seq_len or set data.sft_overlong=skip to drop them"
        )
    return [ex for ex in examples if len(ex.ids) <= seq_len], len(long)


def sft_rows(cfg: Any, split: str, tokenizer: Any) -> tuple[list[Row], SFTReport, str]:
    """Packed rows of `split` ("train" | "validation"), the report and a data fingerprint."""
    L, data = cfg.train.seq_len, cfg.data
    check_template(tokenizer, data.tokenizer)
    examples = rendered_examples(data.corpus, tokenizer)
    train_idx, val_idx = split_examples(len(examples), data.val_fraction, data.seed)
    if split == "validation" and len(val_idx) == 0:
        raise ValueError(
            f"data.val_fraction={data.val_fraction} holds out no example of {len(examples)}"
        )
    chosen = [examples[i] for i in (train_idx if split == "train" else val_idx)]
    kept, skipped = drop_overlong(chosen, L, data.sft_overlong)
    if not kept:
        raise ValueError(f"no {split} SFT example fits train.seq_len={L} ({skipped} skipped)")
    if skipped:
        log.warning("SFT %s: skipped %d example(s) longer than %d tokens", split, skipped, L)
    rows = pack_examples(kept, L, tokenizer.pad_id)
    tokens = sum(len(ex.ids) for ex in kept)
    report = SFTReport(
        examples=len(kept),
        skipped_overlong=skipped,
        longest=max(len(ex.ids) for ex in chosen),
        tokens=tokens,
        assistant_tokens=int(sum(ex.mask.sum() for ex in kept)),
        rows=len(rows),
        fill=tokens / (len(rows) * L),
    )
    log.info("SFT %s: %s", split, report)
    return rows, report, _fingerprint(rows)


def sft_dataset(
    cfg: Any, split: str, tokenizer: Any, process_index: int, process_count: int
) -> tuple[grain.MapDataset, str]:
    """This process's batches of packed SFT rows, laid out like `llm.data.pipeline`'s.

    Train rows repeat in a new seeded order every epoch; validation is one pass rounded up to
    whole global batches with padding rows (loss_mask 0). Returns the dataset and the data
    fingerprint that the iterator state carries.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"data.format=chat has splits train and validation, not {split!r}")
    B, seed = cfg.train.batch_size, cfg.data.seed
    rows, _, key = sft_rows(cfg, split, tokenizer)
    if split == "train":
        indices = grain.MapDataset.range(len(rows)).shuffle(seed=seed).repeat(None)
    else:
        indices = grain.MapDataset.range(-(-len(rows) // B) * B)
    pad = padding_row(cfg.train.seq_len, tokenizer.pad_id)
    ds = indices.map(lambda i: rows[i] if i < len(rows) else pad)
    return ds.batch(B // process_count, drop_remainder=True)[process_index::process_count], key


def check_template(tokenizer: Any, spec: str) -> None:
    """Refuses to render in our template when the tokenizer's model has its own.

    A model directory's tokenizer_config.json carries the chat format the model was trained
    with; a tokenizer loaded from the bare tokenizer.json (`load_tokenizer`) lacks it, and
    SFT would then teach the model a different format without a word.
    """
    config = Path(spec).parent / "tokenizer_config.json" if spec != "byte" else None
    if getattr(tokenizer, "chat_template", None) is not None or config is None:
        return
    if config.is_file() and "chat_template" in json.loads(config.read_text()):
        raise ValueError(
            f"data.tokenizer={spec!r} comes with a chat template ({config}) that the tokenizer "
            "given to the SFT data does not carry, so examples would be rendered in another "
            "format; pass the tokenizer of llm.checkpoint.load_model(...) to train(cfg, "
            "tokenizer=...)"
        )


def _fingerprint(rows: Sequence[Row]) -> str:
    h = hashlib.sha256()
    for row in rows:
        for key in sorted(row):
            h.update(row[key].tobytes())
    return h.hexdigest()[:16]

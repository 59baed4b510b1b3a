"""Preference data: chosen/rejected pairs or KTO's labelled completions -> [N, 2, L] rows.

Records (prompt/chosen/rejected as text or messages, implicit prompts, KTO's
prompt/completion/label, optional margin) are read by llm/data/preference_records.py, whose
docstring gives the formats; this module renders them and lays out the rows.

Rendering is SFT's (`llm.data.sft.render`, the tokenizer's own chat template when it has
one), with the mask cut down to the completion: from the token after the generation prompt
through the end-of-turn token. Rows (the batch layout every alignment loss reads):

* pairs (every loss but kto): inputs / positions / segment_ids / targets / loss_mask
  [N, 2, L], index 0 the chosen conversation and 1 the rejected, one per row, right-padded,
  positions from 0, segment_ids 1 on real tokens; `weight` [N] (1, 0 on the padding pairs
  that round validation up to whole batches); with loss.name=reward also `margin` [N], the
  record's margin or `loss.margin`.
* kto: the same leaves, index 0 the example (prompt + its completion) and index 1 the same
  prompt with another example's completion (KTO's KL estimate: a seeded shuffle of the
  records, each taking the completion of the next record, so never its own when N > 1),
  `label` [N] (1 desirable, 0 undesirable), `weight` [N]. KTO also reads pair corpora: a pair
  becomes a desirable (chosen) and an undesirable (rejected) example, as TRL's
  `unpair_preference_dataset` does.

The held-out split is by record (`llm.data.sft.split_examples`, data.seed, data.val_fraction).
A row (either side) longer than train.seq_len is never cut: data.sft_overlong=error refuses
the data naming file:line, skip drops the row and counts it in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from llm.data.example_rows import example_batches
from llm.data.preference_records import Messages, Pair, Unpaired, read_preferences
from llm.data.sft import (
    Example,
    build_row,
    check_template,
    end_of_turn_ids,
    last_stop_end,
    split_examples,
)
from llm.data.sources import resolve_files
from llm.tokenizers.chat import apply_chat

__all__ = ["Pair", "Unpaired", "preference_dataset", "preference_rows", "read_preferences"]
log = logging.getLogger(__name__)
Rows = dict[str, np.ndarray]
PAIR_LOSSES = ("reward", "dpo", "cdpo", "ipo", "simpo", "orpo")  # read chosen/rejected pairs
UNPAIRED_LOSSES = ("kto",)  # read labelled completions (and pairs, unpaired)
ROW_LEAVES = ("inputs", "positions", "segment_ids", "targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PreferenceReport:
    """What reading saw; `skipped_overlong` is never silent."""

    layout: str  # "pairs" | "kto"
    records: int  # records of the split
    examples: int  # rows kept (pairs, or KTO examples)
    skipped_overlong: int  # rows with a side longer than train.seq_len, dropped under skip
    longest: int  # tokens of the longest side read (kept or not)
    completion_tokens: int  # masked (trained) tokens of the kept rows, both sides
    desirable: int | None  # KTO: kept examples labelled desirable (None for pairs)


# -------------------------------------------------------------------------- rendering


def render_completion(
    tokenizer: Any, prompt: Messages, completion: str, where: str, head: list[int] | None = None
) -> Example:
    """The prompt and its completion rendered; the mask holds the completion's tokens only.

    This is `llm.data.sft.render`'s rule for the last assistant turn (from the token after
    the generation prompt through the end-of-turn token) with the prompt's own assistant
    turns left untrained. `head`, the prompt rendered with the generation prompt, may be
    passed in: the two sides of a pair share it, and a Jinja render costs about a ms.
    """
    full = apply_chat(tokenizer, [*prompt, {"role": "assistant", "content": completion}])
    head = apply_chat(tokenizer, list(prompt), add_generation_prompt=True) if head is None else head
    if full[: len(head)] != head:
        raise ValueError(
            f"{where}: the chat template is not prefix-stable: the prompt rendered with the "
            "generation prompt is not a prefix of the conversation, so the completion's tokens "
            "cannot be located"
        )
    stops = end_of_turn_ids(tokenizer)
    end = last_stop_end(full, len(head), stops)
    if end is None or end == len(head):
        raise ValueError(f"{where}: the completion rendered without an end-of-turn token {stops}")
    mask = np.zeros(len(full), bool)
    mask[len(head) : end] = True
    return Example(np.asarray(full, np.int32), mask, where)


def check_task(cfg: Any) -> str:
    """The row layout ("pairs" | "kto") of data.format=preference under cfg.loss.name."""
    name = cfg.loss.name
    if name not in PAIR_LOSSES + UNPAIRED_LOSSES:
        raise ValueError(
            f"data.format=preference makes preference rows, but loss.name={name!r} does not "
            f"read them; use one of {', '.join(PAIR_LOSSES + UNPAIRED_LOSSES)}"
        )
    return "kto" if name in UNPAIRED_LOSSES else "pairs"


# ------------------------------------------------------------------------------- rows


def _side_rows(pairs: Sequence[tuple[Example, Example]], L: int, pad: int) -> Rows:
    """[N, 2, L] row leaves of (index 0, index 1) examples, one example per row."""
    sides = [[build_row([a], L, pad), build_row([b], L, pad)] for a, b in pairs]
    return {k: np.stack([[a[k], b[k]] for a, b in sides]) for k in ROW_LEAVES}


def _kept(pairs: Sequence[tuple[Example, Example]], L: int, policy: str) -> tuple[list[int], int]:
    """Indices of the rows whose sides both fit L; under policy 'error' all must."""
    long = [i for i, p in enumerate(pairs) if max(len(p[0].ids), len(p[1].ids)) > L]
    if long and policy == "error":
        worst = max(long, key=lambda i: max(len(e.ids) for e in pairs[i]))
        a, b = (len(e.ids) for e in pairs[worst])
        raise ValueError(
            f"{len(long)} of {len(pairs)} preference rows are longer than train.seq_len={L} "
            f"(longest: sides of {a} and {b} tokens at {pairs[worst][0].origin}); rows are "
            "never cut: raise train.seq_len or set data.sft_overlong=skip to drop them"
        )
    return sorted(set(range(len(pairs))) - set(long)), len(long)


def pair_rows(cfg: Any, pairs: Sequence[Pair], tokenizer: Any) -> tuple[Rows, PreferenceReport]:
    """Rows of chosen/rejected pairs (see the module docstring)."""
    L, pad = cfg.train.seq_len, tokenizer.pad_id
    rendered = [_rendered(tokenizer, p.prompt, (p.chosen, p.rejected), p.origin) for p in pairs]
    keep, skipped = _kept(rendered, L, cfg.data.sft_overlong)
    rows = _side_rows([rendered[i] for i in keep], L, pad)
    rows["weight"] = np.ones(len(keep), np.float32)
    if cfg.loss.name == "reward":
        margins = [pairs[i].margin for i in keep]
        rows["margin"] = np.asarray(
            [cfg.loss.margin if m is None else m for m in margins], np.float32
        )
    return rows, _report("pairs", pairs, rendered, keep, skipped, rows, None)


def kto_rows(
    cfg: Any, records: Sequence[Pair | Unpaired], tokenizer: Any
) -> tuple[Rows, PreferenceReport]:
    """KTO rows: each example and a mismatched completion for the KL estimate."""
    L, pad = cfg.train.seq_len, tokenizer.pad_id
    groups, examples = [], []  # examples: (prompt, completion, label, origin)
    for r in records:
        if isinstance(r, Pair):
            both = [(r.prompt, r.chosen, 1.0, r.origin), (r.prompt, r.rejected, 0.0, r.origin)]
        else:
            both = [(r.prompt, r.completion, float(r.label), r.origin)]
        groups.append(list(range(len(examples), len(examples) + len(both))))
        examples += both
    other = mismatched(groups, cfg.data.seed)
    rendered = [
        _rendered(tokenizer, e[0], (e[1], examples[other[i]][1]), e[3])
        for i, e in enumerate(examples)
    ]
    keep, skipped = _kept(rendered, L, cfg.data.sft_overlong)
    rows = _side_rows([rendered[i] for i in keep], L, pad)
    rows["label"] = np.asarray([examples[i][2] for i in keep], np.float32)
    rows["weight"] = np.ones(len(keep), np.float32)
    desirable = int(rows["label"].sum())
    return rows, _report("kto", records, rendered, keep, skipped, rows, desirable)


def mismatched(groups: Sequence[Sequence[int]], seed: int) -> list[int]:
    """For each example, the example whose completion pairs with its prompt in KTO's KL term.

    `groups` are the examples of each record. The records are put in a seeded order and the
    j-th example of a record takes the j-th (mod size) of the next record in that order, so
    an example never meets its own completion, nor its pair's, unless there is one record.
    """
    order = np.random.default_rng([seed, 0x6B746F]).permutation(len(groups))
    out = [0] * sum(len(g) for g in groups)
    for p, g in enumerate(order):
        own, nxt = groups[g], groups[order[(p + 1) % len(order)]]
        for j, i in enumerate(own):
            out[i] = nxt[j % len(nxt)] if len(groups) > 1 else own[(j + 1) % len(own)]
    return out


def _rendered(tokenizer, prompt, completions, where) -> tuple[Example, Example]:
    head = apply_chat(tokenizer, list(prompt), add_generation_prompt=True)
    a, b = (render_completion(tokenizer, prompt, c, where, head) for c in completions)
    return a, b


def _report(layout, records, rendered, keep, skipped, rows, desirable) -> PreferenceReport:
    return PreferenceReport(
        layout=layout,
        records=len(records),
        examples=len(keep),
        skipped_overlong=skipped,
        longest=max(len(e.ids) for pair in rendered for e in pair),
        completion_tokens=int(rows["loss_mask"].sum()),
        desirable=desirable,
    )


_LAST: dict = {}  # (files, tokenizer, settings, split) -> (rows, report, key): the last two


def preference_rows(cfg: Any, split: str, tokenizer: Any) -> tuple[Rows, PreferenceReport, str]:
    """Rows of `split` ("train" | "validation"), the report and a data fingerprint.

    The result is kept (for the two splits), since validation asks again at every evaluation
    and rendering a pair through a Jinja template costs milliseconds.
    """
    layout, data = check_task(cfg), cfg.data
    check_template(tokenizer, data.tokenizer)
    files = tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in resolve_files(data.corpus)
    )
    settings = (cfg.train.seq_len, cfg.loss, data.seed, data.val_fraction, data.sft_overlong)
    cache_key = (files, id(tokenizer), settings, split)
    if cache_key in _LAST and _LAST[cache_key][0] is tokenizer:
        return _LAST[cache_key][1]
    records = read_preferences(data.corpus)
    if layout == "pairs" and isinstance(records[0], Unpaired):
        raise ValueError(
            f"data.corpus={data.corpus!r} holds unpaired (KTO) records, but loss.name="
            f"{cfg.loss.name!r} needs chosen/rejected pairs; use loss.name=kto"
        )
    train_idx, val_idx = split_examples(len(records), data.val_fraction, data.seed)
    if split == "validation" and len(val_idx) == 0:
        raise ValueError(
            f"data.val_fraction={data.val_fraction} holds out no record of {len(records)}"
        )
    chosen = [records[i] for i in (train_idx if split == "train" else val_idx)]
    rows, report = (pair_rows if layout == "pairs" else kto_rows)(cfg, chosen, tokenizer)
    if report.examples == 0:
        raise ValueError(
            f"no {split} preference row fits train.seq_len={cfg.train.seq_len} "
            f"({report.skipped_overlong} skipped)"
        )
    if report.skipped_overlong:
        log.warning("preference %s: skipped %d over-long row(s)", split, report.skipped_overlong)
    log.info("preference %s: %s", split, report)
    result = (rows, report, _fingerprint(rows, layout))
    if len(_LAST) >= 2:
        _LAST.pop(next(iter(_LAST)))
    _LAST[cache_key] = (tokenizer, result)
    return result


def preference_dataset(
    cfg: Any, split: str, tokenizer: Any, process_index: int, process_count: int
) -> tuple[grain.MapDataset, str]:
    """This process's batches of pairs (or KTO examples): `llm.data.example_rows`."""
    if split not in ("train", "validation"):
        raise ValueError(f"data.format=preference has splits train and validation, not {split!r}")
    B, seed = cfg.train.batch_size, cfg.data.seed
    rows, _, key = preference_rows(cfg, split, tokenizer)
    return example_batches(rows, split, B, seed, process_index, process_count), key


def _fingerprint(rows: Rows, layout: str) -> str:
    h = hashlib.sha256(layout.encode())
    for key in sorted(rows):
        h.update(key.encode())
        h.update(rows[key].tobytes())
    return h.hexdigest()[:16]

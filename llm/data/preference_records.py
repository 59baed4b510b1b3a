"""Preference records: chosen/rejected pairs or KTO's labelled completions, read from JSONL.

One JSON object per line, in the conventions of TRL and Anthropic HH (one corpus holds
pairs or unpaired completions, never both):

    {"prompt": "Quote Genesis 1:3.", "chosen": "And God said, ...", "rejected": "..."}
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}   # conversational
    {"chosen": [whole conversation], "rejected": [whole conversation]}      # implicit prompt
    {"prompt": "...", "completion": "...", "label": true}                  # KTO, unpaired

Text is a user turn (prompt) or an assistant turn (chosen, rejected, completion); a list is
messages as in llm/data/sft.py. A pair's two conversations (prompt + chosen, prompt +
rejected) must share a prefix, the prompt, and then continue with exactly one assistant
message each: that message is the completion, the only span trained or scored. The prompt
may hold earlier assistant turns; they are context, never trained. Optional "margin" (a
number: the reward-model margin of Llama 2's loss) is the pair's `margin` leaf under
loss.name=reward; a pair without one gets `loss.margin`.
A malformed record raises SourceError naming file:line; so does a pair whose sides are
equal (it prefers nothing) and a corpus mixing pairs with unpaired records.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from llm.data.sources import SourceError, jsonl_records
from llm.tokenizers.chat import ROLES

Messages = tuple[dict[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: Messages  # the shared conversation before the completions
    chosen: str  # the preferred assistant message
    rejected: str  # the other one
    margin: float | None  # the record's reward margin, if it has one
    origin: str  # "file:line"


@dataclasses.dataclass(frozen=True)
class Unpaired:
    prompt: Messages
    completion: str  # the assistant message judged
    label: bool  # True: desirable
    origin: str


# ---------------------------------------------------------------------------- records


def read_preferences(spec: str) -> list[Pair] | list[Unpaired]:
    """Every record under `spec`; a malformed one raises SourceError naming file:line."""
    records = jsonl_records(spec, "preference")
    out: list = [parse_record(record, where) for record, where in records]
    other = next((r for r in out if type(r) is not type(out[0])), None)
    if other is not None:
        kinds = {Pair: "a pair (chosen/rejected)", Unpaired: "unpaired (completion/label)"}
        raise SourceError(
            f"{other.origin}: record is {kinds[type(other)]} but {out[0].origin} is "
            f"{kinds[type(out[0])]}; one corpus holds pairs or KTO's unpaired records, not both"
        )
    return out


def parse_record(record: Any, where: str) -> Pair | Unpaired:
    """One record in any of the module's formats (see its docstring)."""
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    paired = {"chosen", "rejected"} & set(record)
    unpaired = {"completion", "label"} & set(record)
    if paired and unpaired:
        raise SourceError(
            f"{where}: record has both pair keys {sorted(paired)} and KTO keys {sorted(unpaired)}"
        )
    if not paired and not unpaired:
        raise SourceError(
            f"{where}: record has neither 'chosen'/'rejected' (a pair) nor 'completion'/'label' "
            f"(KTO) (keys: {sorted(record)[:10]})"
        )
    return _pair(record, where) if paired else _unpaired(record, where)


def _pair(record: dict, where: str) -> Pair:
    for key in ("chosen", "rejected"):
        if key not in record:
            raise SourceError(f"{where}: pair record is missing key {key!r}")
    prompt = _turns(record, "prompt", where, "user") if "prompt" in record else []
    chosen = prompt + _turns(record, "chosen", where, "assistant")
    rejected = prompt + _turns(record, "rejected", where, "assistant")
    if chosen == rejected:
        raise SourceError(
            f"{where}: chosen and rejected are the same; a pair that prefers nothing is refused"
        )
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise SourceError(f"{where}: chosen and rejected share no prompt (message 0 differs)")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        rest = side[k:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise SourceError(
                f"{where}: the two sides first differ at message {k}, after which {name} has "
                f"{[m['role'] for m in rest]}; a pair is one shared prompt followed by exactly "
                "one assistant message on each side"
            )
        _not_empty(rest[0]["content"], name, where)
    margin = record.get("margin")
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin)
    ):
        raise SourceError(f"{where}: 'margin' is {margin!r}, not a finite number")
    return Pair(
        tuple(chosen[:k]),
        chosen[k]["content"],
        rejected[k]["content"],
        None if margin is None else float(margin),
        where,
    )


def _unpaired(record: dict, where: str) -> Unpaired:
    for key in ("prompt", "completion", "label"):
        if key not in record:
            raise SourceError(f"{where}: KTO record is missing key {key!r}")
    label = record["label"]
    if not isinstance(label, bool):
        raise SourceError(
            f"{where}: 'label' is {label!r}, not a boolean (true: desirable, false: undesirable)"
        )
    full = _turns(record, "prompt", where, "user") + _turns(
        record, "completion", where, "assistant"
    )
    if full[-1]["role"] != "assistant":
        raise SourceError(f"{where}: the completion does not end with an assistant message")
    _not_empty(full[-1]["content"], "completion", where)
    return Unpaired(tuple(full[:-1]), full[-1]["content"], label, where)


def _turns(record: dict, key: str, where: str, role: str) -> list[dict[str, str]]:
    """record[key] as messages: a string is one `role` turn, a list is checked messages."""
    value = record[key]
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise SourceError(f"{where}: {key!r} must be a string or a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            raise SourceError(f"{where}: {key}[{k}] is not an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise SourceError(f"{where}: {key}[{k}] role {m['role']!r} is not one of {ROLES}")
        if not isinstance(m["content"], str):
            raise SourceError(f"{where}: {key}[{k}] content is not a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _not_empty(content: str, name: str, where: str) -> None:
    if not content.strip():
        raise SourceError(f"{where}: {name} is empty")

"""Classification data: {"text", "label"} JSONL -> one prompt per row -> batches.

    {"text": "To be, or not to be, that is the question:", "label": "hamlet"}

The loss section (`loss.name=classification`, llm/config/loss.py) owns what the data needs to
know about the task: the label set (`loss.labels`, in class order), the prompt template and,
for label-token scoring, the verbaliser whose tokens must fit after the prompt. With
`loss.labels` empty the label set is the sorted labels of the training split, written into
the run's config (`resolve_labels`), so config.yaml records which index means which label.

One example per row, right-padded: `inputs` holds BOS (with `data.add_bos`) and the prompt's
tokens, `segment_ids` is 1 on them and 0 on padding, `label` is the class index and `weight`
is 1 (0 on the padding rows that round validation up to whole batches). With
`loss.head=label_tokens` an example is C rows ([N, C, L]), the prompt followed by each label's
verbaliser, with the positions and ids of the verbaliser tokens to score (`candidate_rows`).
Not packed: one example per row keeps pooling (last real token, mean over real tokens) a
reduction over the row, and classification examples are short. An example that does not
fit `train.seq_len` (less the longest verbaliser for `head=label_tokens`) is never cut:
`data.sft_overlong=error` refuses the data naming `file:line`, `skip` drops and counts it.
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
from llm.data.sft import split_examples
from llm.data.sources import SourceError, jsonl_records

log = logging.getLogger(__name__)
Rows = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Record:
    text: str
    label: str
    origin: str  # "file:line"


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """What reading saw; `skipped_overlong` is never silent."""

    examples: int  # examples kept
    skipped_overlong: int  # examples longer than the row, dropped under sft_overlong=skip
    longest: int  # tokens of the longest example read (kept or not)
    per_label: dict[str, int]  # kept examples of each label


def read_records(spec: str) -> list[Record]:
    """Every record under `spec`; a malformed one raises SourceError naming file:line."""
    return [_record(record, where) for record, where in jsonl_records(spec, "classification")]


def _record(record: Any, where: str) -> Record:
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("text", "label"):
        if key not in record:
            raise SourceError(f"{where}: record is missing key {key!r} (keys: {sorted(record)})")
        if not isinstance(record[key], str):
            raise SourceError(f"{where}: {key!r} is {type(record[key]).__name__}, not a string")
    if not record["label"]:
        raise SourceError(f"{where}: 'label' is the empty string")
    return Record(record["text"], record["label"], where)


def split_records(cfg: Any, records: Sequence[Record], split: str) -> list[Record]:
    """The records of `split`: a seeded split by example (`llm.data.sft.split_examples`)."""
    train_idx, val_idx = split_examples(len(records), cfg.data.val_fraction, cfg.data.seed)
    if split == "validation" and len(val_idx) == 0:
        raise ValueError(
            f"data.val_fraction={cfg.data.val_fraction} holds out no example of {len(records)}"
        )
    return [records[i] for i in (train_idx if split == "train" else val_idx)]


def check_task(cfg: Any) -> None:
    """data.format=classification needs the classification loss, which owns the label set."""
    if cfg.data.format == "classification" and cfg.loss.name != "classification":
        raise ValueError(
            f"data.format=classification makes labelled rows, but loss.name="
            f"{cfg.loss.name!r} does not read them; set loss.name=classification"
        )
    if cfg.data.format == "classification" and cfg.data.objective != "causal":
        raise ValueError("data.format=classification: data.objective must be causal")


def resolve_labels(cfg: Any) -> Any:
    """`cfg` with `loss.labels` filled from the sorted labels of the training split when the
    classification data leaves it empty (the run's config.yaml then records the order)."""
    check_task(cfg)
    if cfg.data.format != "classification" or cfg.loss.labels:
        return cfg
    labels = sorted({r.label for r in split_records(cfg, read_records(cfg.data.corpus), "train")})
    if len(labels) < 2:
        raise ValueError(
            f"data.corpus={cfg.data.corpus!r}: the training split has {len(labels)} label(s) "
            f"{labels}; classification needs 2 or more (or set loss.labels)"
        )
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, labels=tuple(labels)))


def prompt_ids(tokenizer: Any, text: str, template: str, add_bos: bool) -> list[int]:
    """The model input of one example: [BOS] + tokens of the template around `text`."""
    return [tokenizer.bos_id] * add_bos + tokenizer.encode(template.format(text=text))


def verbalizer_ids(tokenizer: Any, loss_cfg: Any) -> list[list[int]]:
    """Each label's verbaliser tokens, encoded on their own (appended after the prompt's)."""
    out = [tokenizer.encode(loss_cfg.verbalizer.format(label=lab)) for lab in loss_cfg.labels]
    for label, ids in zip(loss_cfg.labels, out, strict=True):
        if not ids:
            raise ValueError(f"loss.verbalizer: label {label!r} encodes to no tokens")
    return out


def reserved_tokens(cfg: Any, tokenizer: Any) -> int:
    """Row positions kept free after the prompt: the longest verbaliser for label_tokens."""
    if cfg.loss.head != "label_tokens":
        return 0
    return max(len(ids) for ids in verbalizer_ids(tokenizer, cfg.loss))


def encode_rows(
    records: Sequence[Record], labels: Sequence[str], tokenizer: Any, cfg: Any
) -> tuple[Rows, ClassificationReport]:
    """[N, L] rows of the records that fit (see the module docstring for the policy)."""
    L, index = cfg.train.seq_len, {label: i for i, label in enumerate(labels)}
    room = L - reserved_tokens(cfg, tokenizer)
    encoded = []
    for r in records:
        if r.label not in index:
            raise SourceError(f"{r.origin}: label {r.label!r} is not in the label set {labels}")
        encoded.append(prompt_ids(tokenizer, r.text, cfg.loss.prompt, cfg.data.add_bos))
    long = [i for i, ids in enumerate(encoded) if len(ids) > room]
    if long and cfg.data.sft_overlong == "error":
        worst = max(long, key=lambda i: len(encoded[i]))
        raise ValueError(
            f"{len(long)} of {len(records)} classification examples need more than {room} "
            f"tokens (train.seq_len={L} less {L - room} for the verbaliser; longest: "
            f"{len(encoded[worst])} at {records[worst].origin}); examples are never cut: raise "
            "train.seq_len or set data.sft_overlong=skip to drop them"
        )
    keep = sorted(set(range(len(records))) - set(long))
    prompts, classes = [encoded[i] for i in keep], [index[records[i].label] for i in keep]
    if cfg.loss.head == "label_tokens":
        rows = candidate_rows(prompts, verbalizer_ids(tokenizer, cfg.loss), L, tokenizer.pad_id)
        rows.update(label=np.asarray(classes, np.int32), weight=np.ones(len(keep), np.float32))
    else:
        rows = _rows(prompts, classes, L, tokenizer)
    kept = [records[i].label for i in keep]
    report = ClassificationReport(
        examples=len(keep),
        skipped_overlong=len(long),
        longest=max(len(ids) for ids in encoded),
        per_label={label: kept.count(label) for label in labels},
    )
    return rows, report


def _rows(encoded: Sequence[list[int]], labels: Sequence[int], L: int, tokenizer: Any) -> Rows:
    n = len(encoded)
    rows = {
        "inputs": np.full((n, L), tokenizer.pad_id, np.int32),
        "positions": np.tile(np.arange(L, dtype=np.int32), (n, 1)),
        "segment_ids": np.zeros((n, L), np.int32),
        "label": np.asarray(labels, np.int32).reshape(n),
        "weight": np.ones(n, np.float32),
    }
    for i, ids in enumerate(encoded):
        rows["inputs"][i, : len(ids)] = ids
        rows["segment_ids"][i, : len(ids)] = 1
    return rows


def candidate_rows(
    prompts: Sequence[list[int]], verbs: Sequence[list[int]], L: int, pad: int
) -> Rows:
    """Label-token rows: for each prompt and class c, the prompt followed by verbaliser c.

    inputs / positions / segment_ids [N, C, L]; score_at [N, C, M] the positions whose
    next-token distribution predicts verbaliser token j, score_ids [N, C, M] that token,
    score_mask [N, C, M] 1 for j < len(verbaliser c) (M: the longest verbaliser).
    """
    n, C, M = len(prompts), len(verbs), max(len(v) for v in verbs)
    rows = {
        "inputs": np.full((n, C, L), pad, np.int32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (n, C, L)).copy(),
        "segment_ids": np.zeros((n, C, L), np.int32),
        "score_at": np.zeros((n, C, M), np.int32),
        "score_ids": np.full((n, C, M), pad, np.int32),
        "score_mask": np.zeros((n, C, M), np.float32),
    }
    for i, ids in enumerate(prompts):
        for c, verb in enumerate(verbs):
            full, m = ids + verb, len(verb)
            if len(full) > L:
                raise ValueError(f"prompt {i} with verbaliser {c}: {len(full)} tokens > {L}")
            rows["inputs"][i, c, : len(full)] = full
            rows["segment_ids"][i, c, : len(full)] = 1
            rows["score_at"][i, c, :m] = np.arange(len(ids) - 1, len(full) - 1)
            rows["score_ids"][i, c, :m] = verb
            rows["score_mask"][i, c, :m] = 1.0
    return rows


def classification_rows(
    cfg: Any, split: str, tokenizer: Any
) -> tuple[Rows, ClassificationReport, str]:
    """Rows of `split` ("train" | "validation"), the report and a data fingerprint."""
    check_task(cfg)
    if not cfg.loss.labels:
        raise ValueError("loss.labels is empty: fill it with resolve_labels(cfg) first")
    records = split_records(cfg, read_records(cfg.data.corpus), split)
    rows, report = encode_rows(records, cfg.loss.labels, tokenizer, cfg)
    if report.examples == 0:
        raise ValueError(
            f"no {split} classification example fits train.seq_len={cfg.train.seq_len} "
            f"({report.skipped_overlong} skipped)"
        )
    if report.skipped_overlong:
        log.warning(
            "classification %s: skipped %d over-long example(s)", split, report.skipped_overlong
        )
    log.info("classification %s: %s", split, report)
    return rows, report, _fingerprint(rows, cfg.loss.labels)


def classification_dataset(
    cfg: Any, split: str, tokenizer: Any, process_index: int, process_count: int
) -> tuple[grain.MapDataset, str]:
    """This process's batches of examples: `llm.data.example_rows`."""
    if split not in ("train", "validation"):
        raise ValueError(
            f"data.format=classification has splits train and validation, not {split!r}"
        )
    B, seed = cfg.train.batch_size, cfg.data.seed
    rows, _, key = classification_rows(cfg, split, tokenizer)
    return example_batches(rows, split, B, seed, process_index, process_count), key


def _fingerprint(rows: Rows, labels: Sequence[str]) -> str:
    h = hashlib.sha256("\0".join(labels).encode())
    for key in sorted(rows):
        h.update(rows[key].tobytes())
    return h.hexdigest()[:16]

"""The documents of the local harness tasks in this folder, read from JSONL beside this file.

Each task's YAML names `custom_dataset: !function local_data.load` and
`dataset_kwargs: {data_file: NAME.jsonl}`, so lm-evaluation-harness loads its documents from
here and never looks online. The harness also passes its metadata (the model's arguments,
the task version) as keyword arguments; they do not change the documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def load(data_file: str, **metadata) -> datasets.DatasetDict:
    """{"test": the records of `data_file`}, one JSON object per non-blank line."""
    path = Path(__file__).parent / data_file
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

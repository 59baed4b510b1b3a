"""A separable toy classification task for the classification tests: {"text", "label"} JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# each class draws its characters from its own alphabet, so one byte tells the class
ALPHABETS = {"digit": "0123456789", "punct": "!?;:,.", "vowel": "aeiou"}


def toy_records(n: int, seed: int = 0, length: tuple[int, int] = (4, 10)) -> list[dict]:
    """`n` records cycling through the classes, each of random length in `length`."""
    rng = np.random.default_rng(seed)
    labels = sorted(ALPHABETS)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        k = int(rng.integers(*length))
        out.append({"text": "".join(rng.choice(list(ALPHABETS[label]), k)), "label": label})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path

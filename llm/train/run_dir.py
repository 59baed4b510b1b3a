"""The run directory's rules: when a run resumes, when it may start over, and its config file.

A run directory holds one run: its checkpoints, `metrics.jsonl` and the `config.yaml` that
`eval.py`, `llm generate` and `load_model` read to rebuild the model. The rules keep those
three consistent:

  * Resume (`train.resume`, the default): the newest checkpoint that verifies is restored
    with its data position. Newer steps that did not verify are moved to
    `unreadable-checkpoints/` (kept for inspection), so the same step numbers are written
    afresh rather than found "already saved".
  * A fresh run in a directory that holds checkpoints (`train.resume=false`) is refused: it
    would report a new model's loss beside the old run's checkpoints, and a later resume
    would pick those up. Asking for it by name, `train.overwrite=true`, deletes the old
    checkpoints, metrics and TensorBoard files once the new state is built.
  * A run whose checkpoint is at or past `train.steps` is finished: running it again trains
    and writes nothing, and says so.
  * `config.yaml` is written only after all of that passed (a config that does not fit the
    checkpoints raises before), atomically, and a different old one is kept as
    `config.<step>.yaml`, the step at which it stopped being the run's config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import yaml

from llm.checkpoint import Checkpointer
from llm.config import Config, to_dict

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESETTABLE = (METRICS, "tb")  # what starting over deletes beside the checkpoints


class RunDirectoryInUse(ValueError):
    """A fresh run was asked for in a directory that holds another run's checkpoints."""


def refuse_fresh_start(run_dir: Path, ckpt: Checkpointer) -> None:
    """Raises RunDirectoryInUse when `run_dir` holds checkpoints (train.resume=false)."""
    steps = ckpt.steps()
    if steps:
        shown = ", ".join(map(str, steps[-4:]))
        raise RunDirectoryInUse(
            f"train.run_dir={str(run_dir)!r} holds checkpoints (steps {shown}) but "
            "train.resume=false asks for a new run: its losses would be reported beside the "
            "old checkpoints. Resume it (train.resume=true), choose another train.run_dir, or "
            "start over with train.overwrite=true (deletes the old checkpoints)"
        )


def start_over(run_dir: Path, ckpt: Checkpointer) -> list[str]:
    """Deletes the old run's checkpoints and logs (train.overwrite); returns what went."""
    gone = [f"checkpoints {ckpt.steps()}"] if ckpt.steps() else []
    ckpt.delete_all()
    if jax.process_index() == 0:
        for name in RESETTABLE:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            gone.append(name)
    return gone


def write_config(cfg: Config, run_dir: Path, step: int) -> Path | None:
    """Writes run_dir/config.yaml; a different old one is kept as config.<step>.yaml (returned)."""
    if jax.process_index() != 0:
        return None
    path, text = run_dir / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False)
    kept = None
    if path.is_file() and path.read_text() != text:
        kept = _unused(run_dir, f"config.{step}", ".yaml")
        os.replace(path, kept)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a kill mid-write leaves the old file, never half of the new one
    return kept


def _unused(run_dir: Path, stem: str, suffix: str) -> Path:
    path, n = run_dir / f"{stem}{suffix}", 1
    while path.exists():
        path, n = run_dir / f"{stem}.{n}{suffix}", n + 1
    return path


def logged(run_dir: Path, step: int, split: str) -> dict[str, Any] | None:
    """The last `split` record ("train", "val") metrics.jsonl holds for `step`, if any."""
    path, found = run_dir / METRICS, None
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if record.get("split") == split and record.get("step") == step:
            found = {k: v for k, v in record.items() if k not in ("step", "split")}
    return found

"""The scaling ladder: train models of several sizes on several token budgets, collect losses.

A ladder file (configs/scaling/ladder.yaml) names a base config, overrides common to all runs,
model sizes (each a set of overrides), and budgets in optimiser steps; the runs are every
size x budget, plus `held_out` (size, steps) pairs that the fit leaves out and predicts
(their sizes may be listed under `held_out_sizes`, used by no fitted run).

Design choices:
  * One run per token budget, each with its own cosine schedule ending at its own last step
    and warmup a fixed fraction of it (Hoffmann et al. 2022, "Training Compute-Optimal Large
    Language Models", sec. 3.1 and fig. A1: intermediate checkpoints of a longer cosine
    schedule overestimate the loss at their token count).
  * Each run trains through the normal entry, `llm.train.loop.train`, in its own run
    directory `<out>/<size>_s<steps>`, so a killed sweep resumes each partial run from its
    checkpoints (train.resume) and trains nothing twice.
  * `<out>/results.jsonl` gets one line per finished run; a run whose line is there with the
    same resolved config is skipped and counted. The same name with another config is an
    error (the ladder changed under an old sweep), never silently mixed.
  * N is the non-embedding parameter count (Kaplan et al. 2020, arXiv:2001.08361, sec. 2.1,
    and `llm.model.accounting`): token and position embeddings and the output layer are left
    out, which makes small models' losses line up on one law. D is steps x batch x seq_len.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from llm.config import Config, ConfigError, load_config, to_dict
from llm.data.sources import jsonl_records
from llm.model.accounting import param_counts
from llm.train.loop import train

RESULTS = "results.jsonl"
LADDER_KEYS = (
    "base",
    "overrides",
    "sizes",
    "steps",
    "held_out",
    "held_out_sizes",
    "warmup_fraction",
)


@dataclasses.dataclass(frozen=True)
class Rung:
    """One run of the ladder."""

    name: str  # run name and directory under the sweep's output directory
    size: str  # the size's name in the ladder
    steps: int  # optimiser steps: the token budget over tokens per step
    held_out: bool  # left out of the fit and predicted by it


@dataclasses.dataclass(frozen=True)
class Ladder:
    """A sweep: a base config, sizes (overrides each) and budgets (steps)."""

    base: Path  # base config YAML (relative paths in the file are to the ladder's folder)
    overrides: tuple[str, ...]  # dotted overrides applied to every run
    sizes: tuple[tuple[str, tuple[str, ...]], ...]  # (size name, its dotted overrides)
    steps: tuple[int, ...]  # token budgets in optimiser steps; every size runs each
    held_out: tuple[tuple[str, int], ...]  # (size name, steps) runs predicted, not fitted
    held_out_sizes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # sizes only held_out uses
    warmup_fraction: float = 0.05  # warmup steps as a fraction of each run's steps

    def rungs(self) -> list[Rung]:
        """Fitted runs (size-major, small budgets first), then held-out ones."""
        grid = [(s, n, False) for s, _ in self.sizes for n in self.steps]
        grid += [(s, n, True) for s, n in self.held_out]
        return [Rung(f"{s}_s{n}", s, n, held) for s, n, held in grid]

    def config(self, rung: Rung, out: Path) -> Config:
        """The resolved config of one run: base, common overrides, size, budget."""
        size = dict(self.sizes + self.held_out_sizes)[rung.size]
        warmup = max(1, round(self.warmup_fraction * rung.steps))
        own = [f"train.steps={rung.steps}", f"optim.warmup_steps={warmup}",
               f"train.run_dir={out / rung.name}"]  # fmt: skip
        return load_config(self.base, [*self.overrides, *size, *own])


def load_ladder(path: str | Path) -> Ladder:
    """Reads and checks a ladder YAML file; errors name the file and the key."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = sorted(set(data) - set(LADDER_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; a ladder has {list(LADDER_KEYS)}")
    for key in ("base", "sizes", "steps"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    sizes = data["sizes"]
    if not isinstance(sizes, dict) or not sizes:
        raise ConfigError(f"{path}: sizes must map size names to overrides")
    steps = data["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, int) and s > 0 for s in steps):
        raise ConfigError(f"{path}: steps must be a list of positive integers, got {steps!r}")
    extra = data.get("held_out_sizes") or {}
    shared = sorted(set(map(str, sizes)) & set(map(str, extra)))
    if shared:
        raise ConfigError(f"{path}: held_out_sizes {shared} repeat names of sizes")
    held = [_held_out(path, item, {**sizes, **extra}) for item in data.get("held_out") or []]
    base = Path(data["base"])
    twice = [f"{s}_s{n}" for s, n in held if s in sizes and n in steps]
    if twice:
        raise ConfigError(f"{path}: held_out runs {twice} are also fitted runs of sizes x steps")
    return Ladder(
        base=base if base.is_absolute() else path.parent / base,
        overrides=_overrides(path, "overrides", data.get("overrides") or {}),
        sizes=tuple((str(k), _overrides(path, f"sizes.{k}", v)) for k, v in sizes.items()),
        steps=tuple(steps),
        held_out=tuple(held),
        held_out_sizes=tuple(
            (str(k), _overrides(path, f"held_out_sizes.{k}", v)) for k, v in extra.items()
        ),
        warmup_fraction=float(data.get("warmup_fraction", 0.05)),
    )


def _overrides(path: Path, key: str, mapping: Any) -> tuple[str, ...]:
    """{"model.d_model": 32} -> ("model.d_model=32",); values written as JSON (valid YAML)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: {key} must map dotted config keys to values")
    return tuple(f"{k}={json.dumps(v)}" for k, v in mapping.items())


def _held_out(path: Path, item: Any, sizes: dict) -> tuple[str, int]:
    ok = isinstance(item, dict) and set(item) == {"size", "steps"}
    if not ok or item["size"] not in sizes or not isinstance(item["steps"], int):
        raise ConfigError(
            f"{path}: held_out entry {item!r} must be {{size: <one of {list(sizes)}>, steps: N}}"
        )
    return str(item["size"]), item["steps"]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One finished run, as a line of results.jsonl."""

    name: str  # run name (= its directory under the sweep output)
    size: str  # size name in the ladder
    steps: int  # optimiser steps
    n_params: int  # N: non-embedding parameters
    n_total: int  # all parameters, embeddings included
    tokens: int  # D: training tokens = steps x batch_size x seq_len
    val_loss: float  # final validation loss, nats per token (per byte for the byte tokenizer)
    train_loss: float  # mean training loss of the last logged window
    wall_s: float  # wall time of this invocation of the run (a resumed run: the last part)
    held_out: bool  # excluded from the fit
    config_sha256: str  # sha256 of the resolved config's YAML


def config_sha256(cfg: Config) -> str:
    """sha256 of the resolved config's YAML, without train.run_dir: where the sweep's folder
    lives (a relative or absolute --out, a moved folder) is not a change of the ladder."""
    data = to_dict(cfg)
    data["train"] = {k: v for k, v in data["train"].items() if k != "run_dir"}
    return hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()


def read_results(path: str | Path) -> list[RunResult]:
    """Every record of a results.jsonl; a bad line is an error naming file:line."""
    fields = {f.name for f in dataclasses.fields(RunResult)}
    found = []
    for record, where in jsonl_records(str(path), "scaling result"):
        if not isinstance(record, dict) or set(record) != fields:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where}: a result needs the keys {sorted(fields)}, got {got}")
        found.append(RunResult(**record))
    return found


@dataclasses.dataclass(frozen=True)
class SweepReport:
    results: list[RunResult]  # every run of the ladder that has a result, in ladder order
    ran: int  # runs trained (or finished) by this invocation
    skipped: int  # runs skipped because results.jsonl already held them
    stopped: str | None  # signal name if a run was stopped; the sweep stops with it


def run_sweep(
    ladder: Ladder,
    out: str | Path,
    *,
    train_fn: Callable[[Config], dict[str, Any]] | None = None,
    progress: bool = True,
) -> SweepReport:
    """Trains every rung without a result yet, appending each result to `<out>/results.jsonl`.

    `train_fn` replaces `llm.train.loop.train` (tests)."""
    train_fn = train_fn or train
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = {r.name: r for r in read_results(out / RESULTS)} if (out / RESULTS).exists() else {}
    results, ran, skipped = [], 0, 0
    for rung in tqdm(ladder.rungs(), desc="scaling sweep", unit="run", disable=not progress):
        cfg = ladder.config(rung, out)
        sha = config_sha256(cfg)
        if rung.name in done:
            _check_same(out / RESULTS, done[rung.name], sha)
            results.append(done[rung.name])
            skipped += 1
            continue
        t0 = time.perf_counter()
        summary = train_fn(cfg)
        if summary["stopped"]:
            return SweepReport(results, ran, skipped, summary["stopped"])
        result = _result(rung, cfg, summary, time.perf_counter() - t0, sha)
        with open(out / RESULTS, "a") as f:
            f.write(json.dumps(dataclasses.asdict(result)) + "\n")
        results.append(result)
        ran += 1
    return SweepReport(results, ran, skipped, None)


def _check_same(path: Path, old: RunResult, sha: str) -> None:
    if old.config_sha256 != sha:
        raise ValueError(
            f"{path}: run {old.name!r} was made with another config (sha256 "
            f"{old.config_sha256[:12]} vs now {sha[:12]}): the ladder changed; "
            "use a new --out, or delete that line and the run's directory"
        )


def _result(rung: Rung, cfg: Config, summary: dict, wall_s: float, sha: str) -> RunResult:
    counts = param_counts(cfg.model)
    val = (summary.get("val") or {}).get("loss")
    if val is None or not math.isfinite(val):
        raise ValueError(f"run {rung.name} ({cfg.train.run_dir}) has no finite validation loss")
    t = cfg.train
    return RunResult(
        name=rung.name,
        size=rung.size,
        steps=rung.steps,
        n_params=counts.non_embedding,
        n_total=counts.total,
        tokens=rung.steps * t.batch_size * t.seq_len,
        val_loss=float(val),
        train_loss=float(summary["loss"]) if summary.get("loss") is not None else math.nan,
        wall_s=round(wall_s, 2),
        held_out=rung.held_out,
        config_sha256=sha,
    )

"""The results of `llm eval --tasks`: one JSON file per evaluation, and the printed table.

    {"model": {"path", "layout", "step", "config_sha256", "params_sha256"},
     "settings": {"tasks", "shots", "seed", "limit", "batch_size", ...},
     "tasks": {NAME: {"kind": "mc"|"gen"|"ppl", "n", "metrics", "ci95", "per_item", "skipped",
                      "domains"?, "truncated"?}},
     "llm_version", "created"}

`per_item` holds one list per per-item metric, aligned with `per_item["id"]`, so that
`llm compare` can pair two evaluations item by item; `domains` (when the task's records carry
one) maps each domain to its own {"n", "metrics"}; `truncated` (when not 0) counts the requests
scored with their oldest context tokens cut to fit the model's length.

The model's identity, so that two results files can say whether they scored the same model:
  * config_sha256: SHA-256 of the config as canonical JSON (keys sorted, no spaces; the
    plain-data form `llm.config.base.to_dict` that config.yaml is written from);
  * params_sha256: SHA-256 over the param leaves in tree order (`jax.tree_util` flattening
    order, sorted dict keys), each fed as its path, dtype and shape on one line, then its
    C-order bytes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llm.config.base import to_dict

KINDS = ("mc", "gen", "ppl", "harness")
MAX_DOMAIN_ROWS = 12  # tasks with more domains print one line pointing to the JSON


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What one task measured (contract 4 of the evaluation suite)."""

    kind: str  # "mc" | "gen" | "ppl" | "harness"
    n: int  # items scored (documents for ppl:SOURCE, tokens for the bare ppl)
    metrics: dict[str, float]  # aggregate figures
    ci95: dict[str, tuple[float, float]]  # 95% bootstrap interval of per-item means
    per_item: dict[str, list]  # "id" and one list per per-item value, aligned
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> items
    domains: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    truncated: int = 0  # requests scored with their oldest context tokens cut to fit max_len

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind {self.kind!r} is not one of {KINDS}")
        for name, values in self.per_item.items():
            if len(values) != self.n:
                raise ValueError(f"per_item[{name!r}] has {len(values)} values for n={self.n}")

    def to_json(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "n": self.n,
            "metrics": self.metrics,
            "ci95": {k: list(v) for k, v in self.ci95.items()},
            "per_item": self.per_item,
            "skipped": self.skipped,
        }
        out |= {"domains": self.domains} if self.domains else {}
        return out | ({"truncated": self.truncated} if self.truncated else {})


def config_sha256(config: Any) -> str:
    """SHA-256 of the config's canonical JSON (module docstring)."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def params_sha256(params: Any) -> str:
    """SHA-256 of the param tree: (path, dtype, shape, bytes) of each leaf in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        head = f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}\n"
        digest.update(head.encode("utf-8"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_record(model: Any) -> dict[str, Any]:
    """The "model" entry of a results file, from an `llm.checkpoint.LoadedModel`."""
    return {
        "path": str(model.path),
        "layout": model.layout,
        "step": model.step,
        "config_sha256": config_sha256(model.config),
        "params_sha256": params_sha256(model.params),
    }


def results_json(
    model: dict[str, Any], settings: dict[str, Any], tasks: dict[str, TaskResult]
) -> dict[str, Any]:
    """The whole results document (module docstring)."""
    return {
        "model": model,
        "settings": settings,
        "tasks": {name: result.to_json() for name, result in tasks.items()},
        "llm_version": importlib.metadata.version("llm"),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def default_path(checkpoint: str | Path, now: datetime.datetime | None = None) -> Path:
    """`<checkpoint>/eval/results-<UTC time>.json`; `-2`, `-3`... when that name is taken."""
    now = now or datetime.datetime.now(datetime.UTC)
    stem = Path(checkpoint) / "eval" / f"results-{now:%Y%m%dT%H%M%SZ}"
    path, k = stem.with_suffix(".json"), 1
    while path.exists():
        k += 1
        path = stem.with_name(f"{stem.name}-{k}.json")
    return path


def write_results(document: dict[str, Any], path: str | Path) -> Path:
    """Writes `document` to a new file at `path`; an existing file is never overwritten
    (FileExistsError naming it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    with path.open("x", encoding="utf-8") as f:  # "x": fails if the file exists
        f.write(text)
    return path


def format_table(tasks: dict[str, TaskResult]) -> str:
    """task, metric, value, 95% CI and n, one row per metric, then the per-domain rows
    (or, past MAX_DOMAIN_ROWS domains, a line saying how many are in the JSON), skips and
    truncations."""
    rows = [("task", "metric", "value", "95% CI", "n")]
    for name, result in tasks.items():
        for metric, value in result.metrics.items():
            rows.append((name, metric, _number(value), _interval(result.ci95.get(metric)),
                         str(result.n)))  # fmt: skip
        rows += _domain_rows(name, result.domains)
        for reason, count in result.skipped.items():
            rows.append((name, f"skipped: {reason}", str(count), "", ""))
        if result.truncated:
            rows.append((name, "requests truncated", str(result.truncated), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(_row(row, widths) for row in rows)


def _domain_rows(name: str, domains: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    if len(domains) > MAX_DOMAIN_ROWS:
        return [(name, f"{len(domains)} domains", "in the results JSON", "", "")]
    return [
        (f"  {name}/{domain}", metric, _number(value), "", str(part["n"]))
        for domain, part in domains.items()
        for metric, value in part["metrics"].items()
    ]


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    """Text columns left-aligned, numbers right-aligned."""
    pairs = enumerate(zip(cells, widths, strict=True))
    padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
    return "  ".join(padded).rstrip()


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.6g}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{_number(ci[0])}, {_number(ci[1])}]"

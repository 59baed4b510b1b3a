"""Model A vs model B from two `llm eval --tasks` results files, item by item.

Each task's `per_item` lists (results JSON, llm/eval/results.py) are paired by item id, and
every metric that has per-item values in both files is compared with the paired tests of
llm/eval/significance.py: the paired bootstrap (difference, CI, p-value), the sign-flip
permutation test, and the exact McNemar test when both sides are 0/1. The difference is
always B - A, so a positive difference means B scored higher.

Nothing is dropped silently: items present on one side only are an error unless the caller
allows a subset, and then they are counted in the comparison; tasks present in one file only
and aggregate metrics without per-item values are listed as not compared.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.eval.significance import McNemarResult, mcnemar, paired_bootstrap, permutation_test


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    """One metric of one task, paired over the items both files scored."""

    task: str
    metric: str
    n: int  # items paired
    mean_a: float
    mean_b: float
    diff: float  # mean(B) - mean(A)
    ci: tuple[float, float]  # paired bootstrap interval of diff at `level`
    p_bootstrap: float  # two-sided, shifted-null paired bootstrap
    p_permutation: float  # two-sided paired sign-flip test
    mcnemar: McNemarResult | None  # for 0/1 metrics only


@dataclasses.dataclass(frozen=True)
class Comparison:
    path_a: str
    path_b: str
    level: float
    n_resamples: int
    seed: int
    rows: list[MetricComparison]
    only_a: dict[str, int]  # task -> items of A with no match in B (compared tasks only)
    only_b: dict[str, int]
    not_compared: list[str]  # one line each: what was not compared and why


def read_results(path: str | Path) -> dict[str, Any]:
    """A results JSON file, checked for the parts a comparison reads."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError(f'{path}: not an `llm eval --tasks` results file (no "tasks" object)')
    return data


def item_values(data: dict, path: str | Path, task: str) -> tuple[list, dict[str, np.ndarray]]:
    """(ids, {metric: [N] float64}) of a task: the per-item lists of its aggregate metrics."""
    where = f"{path}: tasks[{task!r}]"
    entry = data["tasks"][task]
    per_item = entry.get("per_item") if isinstance(entry, dict) else None
    if not isinstance(per_item, dict) or not isinstance(per_item.get("id"), list):
        raise ValueError(f"{where} has no per_item ids, so its items cannot be paired")
    ids = per_item["id"]
    for i, item_id in enumerate(ids):
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise ValueError(f"{where}.per_item.id[{i}] = {item_id!r} is not a string or int")
    seen: dict = {}
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise ValueError(
                f"{where}: item id {item_id!r} appears twice (at {seen[item_id]}, {i})"
            )
        seen[item_id] = i
    values = {}
    for metric in entry.get("metrics", {}):
        if metric in per_item and metric != "id":
            values[metric] = _numbers(per_item[metric], len(ids), f"{where}.per_item[{metric!r}]")
    return ids, values


def _numbers(raw: Any, n: int, where: str) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != n:
        size = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise ValueError(f"{where} has {size} values for {n} ids")
    for i, value in enumerate(raw):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}[{i}] = {value!r} is not a finite number")
    return np.asarray(raw, dtype=np.float64)


def pair_ids(ids_a: list, ids_b: list) -> tuple[np.ndarray, np.ndarray, list, list]:
    """(index into A, index into B) of the shared ids in A's order; ids only in A; only in B."""
    where_b = {item_id: j for j, item_id in enumerate(ids_b)}
    shared = [(i, where_b[item_id]) for i, item_id in enumerate(ids_a) if item_id in where_b]
    in_a = set(ids_a)
    only_a = [item_id for item_id in ids_a if item_id not in where_b]
    only_b = [item_id for item_id in ids_b if item_id not in in_a]
    idx = np.asarray(shared, dtype=np.int64).reshape(-1, 2)
    return idx[:, 0], idx[:, 1], only_a, only_b


def compare_files(
    path_a: str | Path,
    path_b: str | Path,
    *,
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
    allow_subset: bool = False,
    level: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Pair two results files task by task and test every shared per-item metric."""
    data_a, data_b = read_results(path_a), read_results(path_b)
    not_compared = []
    for path, data, other in ((path_a, data_a, data_b), (path_b, data_b, data_a)):
        for name in data["tasks"]:
            if name not in other["tasks"] and (tasks is None or name in tasks):
                not_compared.append(f"task {name!r}: only in {path}")
    names = [name for name in data_a["tasks"] if name in data_b["tasks"]]
    for name in tasks or []:
        if name not in names:
            raise ValueError(f"--task {name!r} is not in both files (shared tasks: {names})")
    test = functools.partial(_compare_metric, level=level, n_resamples=n_resamples, seed=seed)
    rows, only_a, only_b = [], {}, {}
    for name in tasks or names:
        sides = ((path_a, data_a), (path_b, data_b))
        unpaired = [str(path) for path, data in sides if not _has_item_ids(data["tasks"][name])]
        if unpaired:
            not_compared.append(f"task {name!r}: no per-item ids in {' and '.join(unpaired)}")
            continue
        task_rows, only_a[name], only_b[name], notes = _compare_task(
            name, *sides, metrics=metrics, allow_subset=allow_subset, test=test
        )
        rows += task_rows
        not_compared += notes
    if not rows:
        raise ValueError("nothing to compare: no metric has per-item values in both files "
                         f"({'; '.join(not_compared) or 'no shared tasks'})")  # fmt: skip
    return Comparison(str(path_a), str(path_b), level, n_resamples, seed, rows, only_a, only_b,
                      not_compared)  # fmt: skip


def _has_item_ids(entry: Any) -> bool:
    per_item = entry.get("per_item") if isinstance(entry, dict) else None
    return isinstance(per_item, dict) and "id" in per_item


def _compare_task(name, side_a, side_b, *, metrics, allow_subset, test):
    """(rows, items only in A, items only in B, notes) of one task present in both files."""
    (path_a, data_a), (path_b, data_b) = side_a, side_b
    ids_a, values_a = item_values(data_a, path_a, name)
    ids_b, values_b = item_values(data_b, path_b, name)
    idx_a, idx_b, missing_b, missing_a = pair_ids(ids_a, ids_b)
    _check_subset(name, path_a, path_b, missing_b, missing_a, allow_subset)
    if not idx_a.size:
        raise ValueError(f"task {name!r}: no item id appears in both files")
    shared = [m for m in values_a if m in values_b and (metrics is None or m in metrics)]
    reported = {
        *data_a["tasks"][name].get("metrics", {}),
        *data_b["tasks"][name].get("metrics", {}),
    }
    notes = [f"task {name!r}, metric {metric!r}: no per-item values in both"
             for metric in metrics or sorted(reported) if metric not in shared]  # fmt: skip
    rows = [test(name, metric, values_a[metric][idx_a], values_b[metric][idx_b])
            for metric in shared]  # fmt: skip
    return rows, len(missing_b), len(missing_a), notes


def _check_subset(name, path_a, path_b, missing_b, missing_a, allow_subset) -> None:
    if allow_subset or not (missing_b or missing_a):
        return
    parts = []
    for missing, here, there in ((missing_b, path_a, path_b), (missing_a, path_b, path_a)):
        if missing:
            parts.append(f"{len(missing)} items of {here} are not in {there} "
                         f"(first: {missing[0]!r})")  # fmt: skip
    raise ValueError(f"task {name!r}: the files scored different items: {'; '.join(parts)}; "
                     "pass --allow-subset to compare the shared items only")  # fmt: skip


def _compare_metric(task, metric, a, b, *, level, n_resamples, seed) -> MetricComparison:
    paired = paired_bootstrap(a, b, level=level, n_resamples=n_resamples, seed=seed)
    binary = bool(np.all((a == 0) | (a == 1)) and np.all((b == 0) | (b == 1)))
    return MetricComparison(
        task=task,
        metric=metric,
        n=paired.n,
        mean_a=paired.mean_a,
        mean_b=paired.mean_b,
        diff=paired.diff,
        ci=paired.ci,
        p_bootstrap=paired.p_value,
        p_permutation=permutation_test(a, b, n_resamples=n_resamples, seed=seed),
        mcnemar=mcnemar(a, b) if binary else None,
    )


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    out = dataclasses.asdict(comparison)
    out["rows"] = [
        {**dataclasses.asdict(row), "ci": list(row.ci)} for row in comparison.rows
    ]  # asdict turns the McNemar result into a dict {only_a, only_b, p_value} or None
    return out


def comparison_table(comparison: Comparison) -> str:
    """One line per (task, metric); then subset counts and what was not compared."""
    tw = max(4, *(len(r.task) for r in comparison.rows))
    mw = max(6, *(len(r.metric) for r in comparison.rows))
    pct = round(100 * comparison.level)
    head = (f"{'task':<{tw}} {'metric':<{mw}} {'n':>6} {'A':>9} {'B':>9} {'B-A':>9} "
            f"{f'{pct}% CI':>21} {'p boot':>7} {'p perm':>7} {'McNemar':>16}")  # fmt: skip
    lines = [f"A = {comparison.path_a}", f"B = {comparison.path_b}", head, "-" * len(head)]
    for r in comparison.rows:
        interval = f"[{_num(r.ci[0], '+')}, {_num(r.ci[1], '+')}]"
        test = "" if r.mcnemar is None else (
            f"{r.mcnemar.only_a}/{r.mcnemar.only_b} p={r.mcnemar.p_value:.3g}"
        )  # fmt: skip
        lines.append(f"{r.task:<{tw}} {r.metric:<{mw}} {r.n:>6} {_num(r.mean_a):>9} "
                     f"{_num(r.mean_b):>9} {_num(r.diff, '+'):>9} {interval:>21} "
                     f"{r.p_bootstrap:>7.4f} {r.p_permutation:>7.4f} {test:>16}")  # fmt: skip
    lines.append(f"(B-A > 0: B scored higher. Paired bootstrap, {comparison.n_resamples} "
                 f"resamples, seed {comparison.seed}; McNemar: only A right/only B right, "
                 "exact)")  # fmt: skip
    for task in comparison.only_a:
        if comparison.only_a[task] or comparison.only_b[task]:
            lines.append(f"task {task!r}: compared shared items only; {comparison.only_a[task]} "
                         f"only in A, {comparison.only_b[task]} only in B")  # fmt: skip
    lines += [f"not compared: {line}" for line in comparison.not_compared]
    return "\n".join(lines)


def _num(x: float, sign: str = "") -> str:
    """4 decimals, or 4 significant digits for large values (perplexities)."""
    return f"{x:{sign}.4f}" if abs(x) < 1000 else f"{x:{sign}.4g}"

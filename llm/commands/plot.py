"""`llm plot RUN_DIR [--out FILE.png] [--metric NAME]`: a run's curves, per split.

The default metric is the loss (training and validation); `--metric reward` draws an RL
run's mean reward per iteration ("rollout") and held-out ("val"), llm/align/rl.py.

Reads `RUN_DIR/metrics.jsonl`. Needs matplotlib (optional extra: `pip install llm[plot]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a run's loss curves to a PNG")
    parser.add_argument("run_dir", help="run directory holding metrics.jsonl")
    parser.add_argument("--out", help="output PNG (default: RUN_DIR/<metric>.png)")
    parser.add_argument("--metric", default="loss", help="the metric drawn (default: loss)")
    parser.set_defaults(func=run)


def read_curves(path: Path, metric: str = "loss") -> dict[str, tuple[list[int], list[float]]]:
    """{split: (steps, values)} from a metrics JSONL; a resumed run's repeats keep the last."""
    curves: dict[str, dict[int, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err})") from None
        if metric in record and isinstance(record[metric], int | float):
            curves.setdefault(record.get("split", "train"), {})[record["step"]] = record[metric]
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in curves.items()}


def run(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a training run directory")
    try:
        import matplotlib
    except ImportError:
        raise ImportError("llm plot needs matplotlib: pip install 'matplotlib>=3.8' "
                          "(or the [plot] extra)", name="matplotlib") from None  # fmt: skip
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = getattr(args, "metric", "loss")  # callers building a Namespace may omit it
    out = Path(args.out) if args.out else Path(args.run_dir) / f"{metric}.png"
    curves = read_curves(path, metric)
    if not curves:
        raise ValueError(f"{path} has no record with a numeric {metric!r}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, (steps, losses) in curves.items():
        ax.plot(steps, losses, label=split, marker="o" if split != "train" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)" if metric == "loss" else metric)
    ax.set_title(str(args.run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0

"""`llm plot RUN_DIR [--out FILE.png]`: training and validation loss curves of a run.

Reads `RUN_DIR/metrics.jsonl`. Needs matplotlib (optional extra: `pip install llm[plot]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a run's loss curves to a PNG")
    parser.add_argument("run_dir", help="run directory holding metrics.jsonl")
    parser.add_argument("--out", help="output PNG (default: RUN_DIR/loss.png)")
    parser.set_defaults(func=run)


def read_curves(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{split: (steps, losses)} from a metrics JSONL; a resumed run's repeats keep the last."""
    curves: dict[str, dict[int, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err})") from None
        if "loss" in record and isinstance(record["loss"], int | float):
            curves.setdefault(record.get("split", "train"), {})[record["step"]] = record["loss"]
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

    out = Path(args.out) if args.out else Path(args.run_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, (steps, losses) in read_curves(path).items():
        ax.plot(steps, losses, label=split, marker="o" if split != "train" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(str(args.run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0

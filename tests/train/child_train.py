"""Subprocess body of the kill/resume tests: trains the tiny config on synthetic batches.

    python child_train.py RUN_DIR [--block-after N] [key=value ...]

With --block-after N, asking for batch N+1 writes RUN_DIR/blocked and sleeps, so the parent
can SIGKILL the process at a known point, after the checkpoints of steps <= N were started.
Exits with `train()`'s `exit_status`, as `llm train` does: 0 finished, 75 stopped by a signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_fixtures import SyntheticBatches, tiny_config

from llm.train.loop import train


class Blocking(SyntheticBatches):
    def __init__(self, run_dir: Path, block_after: int | None):
        super().__init__(8, 16)
        self.run_dir, self.block_after = run_dir, block_after

    def __next__(self):
        if self.block_after is not None and self.index >= self.block_after:
            (self.run_dir / "blocked").write_text(str(self.index))
            while True:
                time.sleep(1)
        return super().__next__()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--block-after", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = tiny_config(args.run_dir, *args.overrides)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    result = train(
        cfg,
        train_batches=Blocking(args.run_dir, args.block_after),
        val_batches=lambda: SyntheticBatches(8, 16, seed=1, limit=2),
    )
    print(f"finished step={result['step']} stopped={result['stopped']}", flush=True)
    sys.exit(result["exit_status"])


if __name__ == "__main__":
    main()

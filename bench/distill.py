"""KD student vs hard-label student: the same student, batches and steps, two objectives.

    python bench/distill.py --teacher models/smollm2 --batches 40 --steps 120 --k 64

The teacher (any model directory) runs once over `--batches` training batches of the preset
(configs/distill_smollm2.yaml) and its top-k log-probabilities at temperature T are cached
(`write_teacher_topk`). Then two students train from the same seed for `--steps` steps over
those batches (cycled): one with the distillation loss on the cached top-k (alpha T^2 KL +
(1 - alpha) CE), one with plain cross-entropy. Prints the teacher's and both students'
cross-entropy and perplexity on held-out Shakespeare (validation split) and Milton.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from llm.checkpoint import load_model
from llm.config import load_config
from llm.data import make_batches
from llm.tokenizers import load_tokenizer
from llm.train import train
from llm.train.evaluate import evaluate
from llm.train.losses.causal_lm import LM_LEAVES
from llm.train.losses.distill import TopKBatches, write_teacher_topk


class LMOnly:
    """The LM leaves of a `TopKBatches` stream (the hard-label student's view of it)."""

    def __init__(self, inner: TopKBatches):
        self.inner = inner

    def __iter__(self) -> LMOnly:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in next(self.inner).items() if k in LM_LEAVES}

    def get_state(self) -> dict[str, int]:
        return self.inner.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self.inner.set_state(state)


def held_out(cfg, model_cfg, params, tok, n: int) -> dict[str, float]:
    """Cross-entropy (nats/token) on `n` batches of the validation split and of Milton."""
    out = {}
    for split in ("validation", "ood"):
        batches = make_batches(cfg, split, tok)
        out[split] = evaluate(model_cfg, params, batches, tok, n)["loss"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="models/smollm2")
    ap.add_argument("--config", default="configs/distill_smollm2.yaml")
    ap.add_argument("--batches", type=int, default=40, help="training batches cached")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--eval_batches", type=int, default=8)
    ap.add_argument("--out", default="runs/bench_distill")
    ap.add_argument("--temperature", type=float, default=None, help="override loss.temperature")
    ap.add_argument("--alpha", type=float, default=None, help="override loss.alpha")
    ap.add_argument("--kd_only", action="store_true", help="skip the hard-label student")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_model(args.teacher)
    tok_path = teacher.config.data.tokenizer
    base = [
        f"data.tokenizer={tok_path}",
        f"train.steps={args.steps}",
        "train.overwrite=true",
        "train.resume=false",
        "train.progress_bar=false",
        "train.tensorboard=false",
    ]
    loss = [f"loss.{k}={v}" for k, v in (("temperature", args.temperature),
                                          ("alpha", args.alpha)) if v is not None]  # fmt: skip
    kd = load_config(args.config, [*base, *loss, "loss.teacher=null", f"loss.top_k={args.k}",
                                   f"train.run_dir={out / 'kd'}"])  # fmt: skip
    tok = load_tokenizer(tok_path)
    t0 = time.perf_counter()
    cache = out / "topk.npz"
    batches = itertools.islice(make_batches(kd, "train", tok), args.batches)
    write_teacher_topk(teacher.config.model, teacher.params, batches, cache, k=args.k,
                       temperature=kd.loss.temperature)  # fmt: skip
    t_cache = time.perf_counter() - t0
    rows = {"teacher": held_out(kd, teacher.config.model, teacher.params, tok, args.eval_batches)}
    times = {"teacher": t_cache}
    hard = load_config(args.config.replace(".yaml", "_hard.yaml"),
                       [*base, f"train.run_dir={out / 'hard'}"])  # fmt: skip
    for name, cfg, stream in (
        ("KD student", kd, TopKBatches(cache, temperature=kd.loss.temperature, top_k=args.k)),
        ("hard-label student", hard, LMOnly(TopKBatches(cache, temperature=kd.loss.temperature,
                                                        top_k=args.k))),
    )[: 1 if args.kd_only else 2]:  # fmt: skip
        t0 = time.perf_counter()
        val = lambda c=cfg: itertools.islice(make_batches(c, "validation", tok), 1)  # noqa: E731
        result = train(cfg, train_batches=stream, val_batches=val)
        times[name] = time.perf_counter() - t0
        rows[name] = held_out(cfg, cfg.model, result["params"], tok, args.eval_batches)
    print(f"\n{args.steps} steps x {kd.train.batch_size} x {kd.train.seq_len} tokens over "
          f"{args.batches} cached batches (top-{args.k}, T={kd.loss.temperature}, "
          f"alpha={kd.loss.alpha})")  # fmt: skip
    print(f"{'model':<20} {'val CE':>8} {'val ppl':>9} {'Milton CE':>10} {'Milton ppl':>11} "
          f"{'wall s':>7}")  # fmt: skip
    for name, r in rows.items():
        v, m = r["validation"], r["ood"]
        print(f"{name:<20} {v:8.4f} {np.exp(v):9.2f} {m:10.4f} {np.exp(m):11.2f} "
              f"{times[name]:7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Times Scorer.loglikelihood (batched, bucketed) against the one-request reference on 200
multiple-choice requests, and runs the local harness MC task.

    python bench/likelihood.py MODEL_DIR [--batch 8]   (from the repository root)
"""

import argparse
import functools
import json
import random
import time
from pathlib import Path

import jax
import numpy as np

from llm.checkpoint import load_model
from llm.eval.harness import run_harness
from llm.eval.likelihood import Scorer, reference_loglikelihood

TASKS = Path("tests/eval/harness_tasks")


def requests(n: int) -> list[tuple[str, str]]:
    """n (context, " choice") pairs: the local MC items with 0-4 seeded shots before them."""
    docs = [json.loads(line) for line in (TASKS / "mc.jsonl").read_text().splitlines()]
    rng, out, i = random.Random(0), [], 0
    while len(out) < n:
        doc = docs[i % len(docs)]
        others = [d for d in docs if d is not doc]
        shots = rng.sample(others, i % 5)
        context = "\n\n".join(
            [f"{s['query']} {s['choices'][s['gold']]}" for s in shots] + [doc["query"]]
        )
        out += [(context, " " + c) for c in doc["choices"]]
        i += 1
    return out[:n]


def timed(fn):
    """(result, wall seconds); the CPU seconds of all threads are kept in CPU[-1]."""
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    CPU.append(time.process_time() - c)
    return result, time.perf_counter() - t


CPU: list[float] = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    model = load_model(args.model)
    scorer = Scorer(model, batch_size=args.batch, add_bos=False)
    reqs = requests(args.n)
    toks = [scorer.fit(scorer.encode_pair(c, x)) for c, x in reqs]
    lengths = [len(t.context) + len(t.continuation) for t in toks]
    print(
        f"{args.n} requests, tokens per request {min(lengths)}-{max(lengths)} "
        f"(mean {np.mean(lengths):.1f}), {len(set(lengths))} distinct lengths; "
        f"devices {jax.devices()}"
    )
    cfg, params = model.config.model, model.params
    fast, cold = timed(lambda: scorer.loglikelihood(reqs))
    ref, rcold = timed(lambda: [reference_loglikelihood(cfg, params, t) for t in toks])
    print(f"cold (compiles included): batched {cold:.1f} s wall, reference {rcold:.1f} s wall")
    for trial in range(2):  # warm, alternating, so a change in machine load hits both
        _, warm = timed(lambda: scorer.loglikelihood(reqs))
        _, rwarm = timed(lambda: [reference_loglikelihood(cfg, params, t) for t in toks])
        print(
            f"warm {trial}: batched (batch {args.batch}) {warm:.1f} s wall {CPU[-2]:.1f} s CPU; "
            f"reference (one at a time) {rwarm:.1f} s wall {CPU[-1]:.1f} s CPU; "
            f"ratio reference/batched {rwarm / warm:.2f} wall, {CPU[-1] / CPU[-2]:.2f} CPU"
        )
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(fast, ref, strict=True))
    rel = max(abs(a.logprob - b.logprob) / abs(b.logprob) for a, b in zip(fast, ref, strict=True))
    greedy_same = all(a.is_greedy == b.is_greedy for a, b in zip(fast, ref, strict=True))
    print(
        f"max |batched - reference| = {diff:.2e} nats (relative {rel:.2e}); "
        f"is_greedy identical: {greedy_same}"
    )
    for add_bos in (False, True):
        out, t = timed(
            functools.partial(
                run_harness, model, ["llm_local_mc"], TASKS, batch_size=args.batch, add_bos=add_bos
            )
        )
        r = out["results"]["llm_local_mc"]
        print(
            f"harness llm_local_mc add_bos={add_bos}: acc {r['acc,none']:.4f} +- "
            f"{r['acc_stderr,none']:.4f}, acc_norm {r['acc_norm,none']:.4f} +- "
            f"{r['acc_norm_stderr,none']:.4f} "
            f"(n={out['n-samples']['llm_local_mc']['effective']}, {t:.1f} s)"
        )


if __name__ == "__main__":
    main()

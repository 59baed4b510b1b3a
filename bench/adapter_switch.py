"""What switching adapters costs a server: one merge (time) against one cached copy (memory).

    python bench/adapter_switch.py                               # random-init configs/tiny.yaml
    python bench/adapter_switch.py --checkpoint models/smollm2   # SmolLM2-135M

For a LoRA adapter of rank r on q/v and on every projection, prints the time of
`AdapterBank` building a merged copy (llm/inference/adapters.py: what a cache miss costs
the request that switches; the first one for given shapes also compiles), the bytes that
copy adds (its targeted matrices; every other buffer is the base's), and, for scale, the
base's bytes and one greedy batch-1 decode step.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from llm.checkpoint import load_model
from llm.config import PeftConfig, load_config
from llm.inference import Engine, StopCriteria
from llm.inference.adapters import AdapterBank
from llm.model import init_params, logical_axes
from llm.peft import init_lora

TARGETS = {"q, v": ("blocks/attn/(q|v)/w",),
           "all 7": ("blocks/attn/(q|k|v|o)/w", "blocks/mlp/(gate|up|down)/w")}  # fmt: skip


def _bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _new_bytes(copy, base) -> int:
    """Bytes of the buffers in `copy` that are not `base`'s own."""
    mine = {id(x) for x in jax.tree.leaves(base)}
    return sum(x.nbytes for x in jax.tree.leaves(copy) if id(x) not in mine)


def _adapter(cfg, params, target, rank):
    peft = PeftConfig(method="lora", rank=rank, target=target)
    tree, _ = init_lora(peft, params, logical_axes(cfg), jax.random.key(0))
    return jax.tree.map(lambda x: x + 0.01 if x.ndim else x, tree)  # B != 0


def _decode_step_s(cfg, bank, tokenizer) -> float:
    engine = Engine(cfg, bank.base, tokenizer, max_len=256)
    stop = StopCriteria(33)
    engine.generate([[1, 2, 3]], stop=StopCriteria(2))  # compile
    start = time.perf_counter()
    engine.generate([[1, 2, 3]], stop=stop)
    return (time.perf_counter() - start) / 33


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="base model directory (default: random tiny)")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    if args.checkpoint:
        m = load_model(args.checkpoint)
        cfg, params, tok = m.config.model, m.params, m.tokenizer
    else:
        cfg = load_config("configs/tiny.yaml").model
        params, tok = init_params(cfg, jax.random.key(0)), None
    adapters = {name: {"lora": _adapter(cfg, params, t, args.rank)} for name, t in TARGETS.items()}
    bank = AdapterBank(params, adapters, cache_size=0)
    step_s = _decode_step_s(cfg, bank, tok)
    print(
        f"base {_bytes(bank.base) / 2**20:.1f} MiB; one batch-1 decode step {step_s * 1e3:.1f} ms"
    )
    print(f"{'targets':<8} {'first ms':>9} {'merge ms':>9} {'x step':>7} {'copy MiB':>9} "
          f"{'x base':>7}")  # fmt: skip
    for name in TARGETS:
        start = time.perf_counter()
        bank.weights(name)  # the first merge of these shapes compiles `_merge_touched`
        first = time.perf_counter() - start
        times = []
        for _ in range(3):
            start = time.perf_counter()
            copy = bank.weights(name)
            times.append(time.perf_counter() - start)
        t, extra = float(np.median(times)), _new_bytes(copy, bank.base)
        ratio = extra / _bytes(bank.base)
        print(f"{name:<8} {first * 1e3:>9.1f} {t * 1e3:>9.1f} {t / step_s:>7.1f} "
              f"{extra / 2**20:>9.1f} {ratio:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The family table: every architecture trained on the default corpus at equal parameters.

    python bench/families.py [--params 100000] [--steps 300] [--batch 16] [--seq-len 64]
        [--layers 2] [--families transformer,moe,mamba,hybrid,encoder_mlm,t5,lstm,lstm_lr,shaw]
        [--out-dir runs/families] [--json FILE] [--md FILE] [--tolerance 0.03]
        [--dry-run] [--quick]

One shared base, configs/default.yaml (Shakespeare bytes, held-out plays, AdamW with its
learning rate, cosine schedule, seed 0), with the run shape set here: every family trains the
same steps on batches of the same shape (`--batch` x `--seq-len` tokens per step), so the
same tokens (warmup: min(50, steps / 10) steps), and is scored on the same `--eval-batches`
validation batches. Only the model section differs: the family's switches (FAMILIES) plus a
width solved so that its parameter count (`llm.model.abstract_params`: every trained weight,
embeddings included) lands within `--tolerance` of `--params` (`solve_width`: d_model by
bisection with d_ff following a ratio, then d_ff alone). Depth is `--layers` for all (T5:
that many encoder AND decoder blocks). A mixture of experts is matched on its TOTAL count; its
active count (experts outside the top-k not counted) is reported beside it. `--dry-run`
prints the solved sizes and trains nothing.

The families (each row's config is in the JSON, `overrides`):
  transformer  the decoder of configs/default.yaml (Vaswani et al. 2017, arXiv:1706.03762;
               pre-norm LayerNorm, learned positions, GELU);
  moe          the same with 4 routed experts per MLP, top-2, softmax router, dropless, the
               load-balancing loss at its default weight 0.01
               (Shazeer et al. 2017, arXiv:1701.06538; Fedus et al. 2022, arXiv:2101.03961);
  mamba        selective state-space blocks (Gu & Dao 2023, arXiv:2312.00752);
  hybrid       Mamba with every 2nd layer an attention block, RoPE (Jamba, arXiv:2403.19887);
  encoder_mlm  the decoder's layout made bidirectional (model.causal=false), trained by masked
               LM (BERT, Devlin et al. 2019, arXiv:1810.04805);
  t5           encoder-decoder with relative position bias, trained by span corruption
               (Raffel et al. 2020, arXiv:1910.10683);
  lstm         the LSTM baseline (Hochreiter & Schmidhuber 1997) with configs/baseline_lstm.yaml's
               init scale; `lstm_lr` also with that preset's learning rate 1e-2 (the one row
               off the shared optimizer, a reference: its lr column says so);
  shaw         the decoder with Shaw et al.'s relative positions (arXiv:1803.02155).

Training is the real entry, `llm.train.train(cfg)`, in a fresh run directory per family; the
final validation pass is the loss's own `evaluate`. What the bpb column measures depends on
the objective, and each row says it:
  causal LM (transformer, moe, mamba, hybrid, lstm(_lr), shaw): nats of every next byte / ln 2 /
    bytes (llm/train/evaluate.py);
  MLM: the same over the ~15% of bytes the objective selected (llm/train/losses/mlm.py), with
    both sides visible: another task, not comparable with the causal figure;
  span corruption: nats of every decoder target (the corrupted spans, their sentinels and EOS)
    / ln 2 / the bytes of the spans (llm/train/losses/seq2seq.py): not comparable either.
Train tokens/s is the loop's own figure (llm/train/monitor.py): batch x seq_len text tokens
per timed step, the compiling step excluded (for T5 the packed text before corruption). On a
shared machine it is noisy; bits per byte is not.

A family whose code is absent (its switches refused, its arch unknown) is listed as "not
available" with the reason, one whose nearest size misses the tolerance as "not matched", one
that fails while training as "failed"; none stops the others. Rows are merged into --json
(when the base and target match), so a family can be rerun alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from llm.config import Config, ConfigError, load_config
from llm.model.accounting import param_counts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "default.yaml"
CAUSAL = "bits per byte, every next byte (causal)"
MLM = "bits per MASKED byte, both sides visible (not causal bpb)"
SPAN = "bits per byte of the corrupted spans, sentinels' nats included (not causal bpb)"


@dataclasses.dataclass(frozen=True)
class Family:
    """One row: its switches (dotted overrides of the base) and how its width is set."""

    label: str
    overrides: tuple[str, ...]  # the family's switches, on top of the shared base
    width: Callable[[int, int], tuple[str, ...]]  # (d_model, d_ff) -> overrides
    d_step: int = 8  # d_model is a multiple of this (heads, even head_dim)
    ff_ratio: float | None = 4.0  # d_ff starts at ratio x d_model; None: the family has no d_ff
    ff_step: int = 8  # d_ff is a multiple of this
    metric: str = CAUSAL  # what the bpb column measures for this objective


def dense(d: int, ff: int) -> tuple[str, ...]:
    return (f"model.d_model={d}", f"model.d_ff={ff}")


def no_ff(d: int, ff: int) -> tuple[str, ...]:
    return (f"model.d_model={d}",)


def moe(d: int, ff: int) -> tuple[str, ...]:
    return (f"model.d_model={d}", f"model.d_ff={ff}", f"model.moe_d_ff={ff}")


FAMILIES = {
    "transformer": Family("decoder Transformer (learned positions)", (), dense),
    "moe": Family(
        "MoE decoder (4 experts, top-2)",
        ("model.n_experts=4", "model.experts_per_token=2"),
        moe,
        ff_ratio=1.0,
        ff_step=2,  # 8 would move the count by 2 matrices x 4 experts x 2 layers x 8 x d_model
    ),
    "mamba": Family("Mamba (selective SSM)", ("model.arch=mamba",), no_ff, d_step=2, ff_ratio=None),
    "hybrid": Family(
        "hybrid Mamba + attention (every 2nd layer, RoPE)",
        ("model.arch=mamba", "model.ssm_attention_every=2", "model.pos_encoding=rope"),
        dense,
    ),
    "encoder_mlm": Family(
        "encoder (the decoder made bidirectional; MLM)",
        ("model.causal=false", "model.vocab_size=260", "data.objective=mlm", "loss.name=mlm"),
        dense,
        metric=MLM,
    ),
    "t5": Family(
        "encoder-decoder (T5, span corruption)",
        # T5's own layout (RMSNorm, relative bias instead of positions, ReLU: v1.0);
        # 272 = 259 + span_sentinels(256 tokens) = 13 sentinel ids (llm/data/objectives.py)
        (
            "model.arch=t5",
            "model.norm=rmsnorm",
            "model.pos_encoding=none",
            "model.activation=relu",
            "model.vocab_size=272",
            "data.objective=span_corruption",
            "loss.name=seq2seq",
        ),
        dense,
        metric=SPAN,
    ),
    "lstm": Family(
        "LSTM (baseline)",  # the init scale of configs/baseline_lstm.yaml
        ("model.arch=lstm", "model.init_std=0.3"),
        no_ff,
        d_step=1,
        ff_ratio=None,
    ),
    "lstm_lr": Family(
        "LSTM at its preset's lr 1e-2",  # the one row off the shared optimizer: a reference
        ("model.arch=lstm", "model.init_std=0.3", "optim.lr=1e-2"),
        no_ff,
        d_step=1,
        ff_ratio=None,
    ),
    "shaw": Family(
        "decoder, Shaw relative positions",
        ("model.pos_encoding=shaw",),
        dense,
    ),
}


@dataclasses.dataclass(frozen=True)
class Base:
    """The run shape every family shares."""

    steps: int = 300
    batch: int = 16
    seq_len: int = 64
    layers: int = 2
    eval_batches: int = 20
    seed: int = 0

    def overrides(self, run_dir: Path | str) -> tuple[str, ...]:
        warmup = max(1, min(50, self.steps // 10))
        return (
            f"train.steps={self.steps}", f"train.batch_size={self.batch}",
            f"train.seq_len={self.seq_len}", f"model.n_layers={self.layers}",
            f"train.seed={self.seed}", f"data.seed={self.seed}", f"train.run_dir={run_dir}",
            f"optim.warmup_steps={warmup}", f"eval.batches={self.eval_batches}",
            "train.eval_every=0", f"train.ckpt_every={self.steps}", "eval.sample_tokens=0",
            f"train.log_every={max(1, min(10, self.steps // 2))}", "train.progress_bar=false",
            "train.tensorboard=false", "train.keep_checkpoints=1",
        )  # fmt: skip


def param_count(cfg: Config) -> int:
    """Every weight of the model (embeddings, norms, biases included), from shapes alone."""
    return param_counts(cfg.model).total


def active_count(cfg: Config) -> int:
    """Weights one token is multiplied by (`llm.model.accounting`: a mixture of experts
    counts top-k of its experts; any other model all of its weights)."""
    return param_counts(cfg.model).active


def closest(f: Callable[[int], int], target: int, lo: int, hi: int) -> int:
    """The k in [lo, hi] whose f(k) is nearest `target`, for f increasing (binary search)."""
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if f(mid) < target:
            a = mid + 1
        else:
            b = mid
    return min((k for k in (a - 1, a) if lo <= k <= hi), key=lambda k: abs(f(k) - target))


def solve_width(
    build: Callable[[tuple[str, ...]], Config], family: Family, target: int
) -> tuple[Config, int]:
    """The family's config whose parameter count is nearest `target`: d_model (a multiple of
    `d_step`, d_ff following `ff_ratio`) by bisection, then d_ff (a multiple of `ff_step`)
    at that d_model. Returns (config, count)."""
    counts: dict[tuple[int, int], int] = {}

    def count(d: int, ff: int) -> int:
        if (d, ff) not in counts:
            counts[d, ff] = param_count(build(family.width(d, ff)))
        return counts[d, ff]

    ratio, step = family.ff_ratio or 0.0, family.ff_step

    def ff_of(d: int) -> int:
        return max(step, round(ratio * d / step) * step)

    k = closest(lambda k: count(k * family.d_step, ff_of(k * family.d_step)), target, 1, 4096)
    d = k * family.d_step
    ff = ff_of(d)
    if family.ff_ratio is not None:
        ff = step * closest(lambda j: count(d, step * j), target, 1, 4 * ff // step + 2)
    return build(family.width(d, ff)), count(d, ff)


def build_config(base: Base, family: Family, run_dir: Path) -> Callable[[tuple[str, ...]], Config]:
    """width overrides -> the validated config of this family on the shared base."""
    shared = (*base.overrides(run_dir), *family.overrides)
    return lambda width: load_config(DEFAULT, [*shared, *width])


def throughput(run_dir: Path, tokens_per_step: int) -> float | None:
    """Train tokens/s over the timed steps of metrics.jsonl (the compiling step has none)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] for r in records if r.get("split") == "train" and "step_s" in r]
    return len(times) * tokens_per_step / sum(times) if times else None


def sized_row(
    name: str, base: Base, target: int, tolerance: float, out_dir: Path
) -> tuple[dict, Config | None]:
    """The family's row with its solved width and counts, and its config (None: not run)."""
    family = FAMILIES[name]
    row = {"family": name, "model": family.label, "metric": family.metric}
    try:
        cfg, params = solve_width(build_config(base, family, out_dir / name), family, target)
    except Exception as err:  # its switches refused or its model not buildable: not landed
        why = _first_line(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        return {**row, "status": "not available", "reason": why[:300]}, None
    m = cfg.model
    if abs(params / target - 1) > tolerance:  # e.g. a width step too coarse for the target
        why = f"nearest count {params:,} is {params / target - 1:+.1%} from the target"
        return {**row, "status": "not matched", "reason": f"{why} (--tolerance {tolerance})"}, None
    row.update(params=params, active_params=active_count(cfg), gap=params / target - 1,
               d_model=m.d_model, d_ff=m.d_ff if family.ff_ratio else None, lr=cfg.optim.lr,
               steps=base.steps, tokens=base.steps * base.batch * base.seq_len,
               overrides=[*family.overrides, *family.width(m.d_model, m.d_ff)])  # fmt: skip
    return {**row, "status": "sized"}, cfg


def train_row(name: str, base: Base, target: int, tolerance: float, out_dir: Path) -> dict:
    """Solves the family's width, trains it and returns its row (or why it has none)."""
    from llm.train import train  # the training stack only once a row is run

    row, cfg = sized_row(name, base, target, tolerance, out_dir)
    if cfg is None:
        return row
    run_dir = Path(cfg.train.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    start = time.perf_counter()
    try:
        result = train(cfg)
    except Exception as err:  # a family's failure is its row, not the end of the table
        return {**row, "status": "failed", "reason": f"{type(err).__name__}: {_first_line(err)}"}
    val = result["val"] or {}
    return {**row, "status": "ok", "bpb": val.get("bpb"), "val_loss": val.get("loss"),
            "wall_s": time.perf_counter() - start,
            "tokens_per_s": throughput(run_dir, base.batch * base.seq_len)}  # fmt: skip


def _first_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return " ".join(lines[:3])[:300] or type(err).__name__


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(rows: list[dict], target: int) -> str:
    """The table; throughput also as a ratio to the decoder Transformer's (the peer) when run,
    and the 1-minute load average when each row ended (a shared machine's rates move with it)."""
    order = {name: i for i, name in enumerate(FAMILIES)}
    rows = sorted(rows, key=lambda r: order.get(r["family"], len(order)))
    peer = next((r.get("tokens_per_s") for r in rows if r["family"] == "transformer"), None)
    lines = [f"| family | params (active) | vs {target:,} | d_model / d_ff | lr | val bpb | "
             "train tok/s | tok/s / transformer | wall (s) | load | what bpb is |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        if "params" not in r:
            lines.append(f"| {r['model']} | {r['status']}: {r['reason']} |" + " |" * 9)
            continue
        active = "" if r["active_params"] == r["params"] else f" ({r['active_params']:,})"
        width = f"{r['d_model']} / {r['d_ff'] if r['d_ff'] else '-'}"
        bpb = _num(r.get("bpb"), ".3f") if "reason" not in r else f"{r['status']}: {r['reason']}"
        speed = r.get("tokens_per_s")
        ratio = speed / peer if speed and peer else None
        cells = [r["model"], f"{r['params']:,}{active}", f"{r['gap']:+.1%}", width,
                 f"{r['lr']:g}", bpb, _num(speed, ",.0f"), _num(ratio, ".2f"),
                 _num(r.get("wall_s"), ".0f"), _num(r.get("load_avg"), ".0f"),
                 r["metric"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


QUICK = {"params": 20_000, "steps": 3, "batch": 8, "seq_len": 32, "eval_batches": 1}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=100_000, help="target parameter count")
    p.add_argument("--tolerance", type=float, default=0.03, help="largest |params/target - 1|")
    p.add_argument("--steps", type=int, default=300, help="training steps of every family")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    p.add_argument("--layers", type=int, default=2, help="model.n_layers of every family")
    p.add_argument("--eval-batches", type=int, default=20, help="validation batches scored")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    p.add_argument("--dry-run", action="store_true", help="solve the widths, train nothing")
    p.add_argument("--out-dir", default="runs/families", help="run directories")
    p.add_argument("--json", default=None, help="merged results (default OUT_DIR/families.json)")
    p.add_argument("--md", default=None, help="markdown table (default OUT_DIR/families.md)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    unknown = sorted(set(args.families.split(",")) - set(FAMILIES))
    if unknown:
        p.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    base = Base(args.steps, args.batch, args.seq_len, args.layers, args.eval_batches)
    out_dir, names = Path(args.out_dir), [f for f in args.families.split(",") if f]
    if args.dry_run:
        rows = [sized_row(n, base, args.params, args.tolerance, out_dir)[0] for n in names]
        print(markdown(rows, args.params))
        return 0
    out_json = Path(args.json or out_dir / "families.json")
    old = json.loads(out_json.read_text()) if out_json.exists() else {}
    same = old.get("base") == dataclasses.asdict(base) and old.get("target") == args.params
    results = {r["family"]: r for r in old.get("rows", [])} if same else {}
    command = " ".join(["python bench/families.py", *(sys.argv[1:] if argv is None else argv)])
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {os.getloadavg()[0]:.1f})", flush=True)
        row = train_row(name, base, args.params, args.tolerance, out_dir)
        finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results[name] = {**row, "load_avg": os.getloadavg()[0], "finished": finished,
                         "command": command}  # fmt: skip
        print(f"  {row['status']}: " + ", ".join(f"{k} {row[k]}" for k in
              ("params", "bpb", "tokens_per_s", "reason") if k in row), flush=True)  # fmt: skip
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"base": dataclasses.asdict(base), "target": args.params,
                                        "rows": list(results.values())}, indent=1))  # fmt: skip
    table = markdown(list(results.values()), args.params)
    Path(args.md or out_dir / "families.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

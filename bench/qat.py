"""QAT int4 vs post-training RTN int4 of the same architecture trained in float, same steps.

    python bench/qat.py --steps 300                       # int4, groups of 32 (the preset)
    python bench/qat.py --steps 300 --bits 3 --group 0    # 3-bit, one scale per channel

Trains configs/qat_tiny.yaml twice from the same seed and batches: in float (train.qat off)
and quantization-aware (int4, groups of 32). Then evaluates on held-out Shakespeare
(validation split) and Milton: the float model, its RTN int4 quantization
(`llm.model.quantized.quantize_params`, what `llm quantize --method rtn` does), and the RTN
int4 quantization of the QAT run's float weights, whose forward equals the QAT forward.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm.checkpoint import load_model
from llm.config import load_config
from llm.data import make_batches
from llm.model.quantized import quantize_params
from llm.tokenizers import load_tokenizer
from llm.train import train
from llm.train.evaluate import evaluate


def held_out(cfg, params, tok, n: int) -> tuple[float, float]:
    """Cross-entropy (nats/token) on `n` batches of the validation split and of Milton."""
    return tuple(
        evaluate(cfg.model, params, make_batches(cfg, split, tok), tok, n)["loss"]
        for split in ("validation", "ood")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/qat_tiny.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval_batches", type=int, default=20)
    ap.add_argument("--out", default="runs/bench_qat")
    ap.add_argument("--bits", type=int, default=None, help="override train.qat.bits")
    ap.add_argument("--group", type=int, default=None, help="override train.qat.group")
    args = ap.parse_args()
    common = [f"train.steps={args.steps}", "train.overwrite=true", "train.resume=false",
              "train.progress_bar=false", "train.tensorboard=false", "train.eval_every=0",
              f"train.ckpt_every={args.steps}"]  # fmt: skip
    common += [
        f"train.qat.{k}={v}"
        for k, v in (("bits", args.bits), ("group", args.group))
        if v is not None
    ]
    qat = load_config(args.config, [*common, f"train.run_dir={Path(args.out) / 'qat'}"])
    flt = load_config(args.config, [*common, "train.qat.fmt=none",
                                    f"train.run_dir={Path(args.out) / 'float'}"])  # fmt: skip
    spec = qat.train.qat
    tok = load_tokenizer(qat.data.tokenizer)
    rows = {}
    for name, cfg in (("float", flt), ("qat", qat)):
        train(cfg)
        weights = load_model(cfg.train.run_dir).params  # the float (shadow) weights
        rtn = quantize_params(cfg.model, weights, fmt=spec.fmt, bits=spec.bits, group=spec.group)
        if name == "float":
            rows["float32 (trained in float)"] = held_out(cfg, weights, tok, args.eval_batches)
            label = f"RTN {spec.fmt} b{spec.bits} g{spec.group} of the float model"
        else:
            label = f"QAT {spec.fmt} b{spec.bits} g{spec.group} (RTN of its weights)"
        rows[label] = held_out(cfg, rtn, tok, args.eval_batches)
    print(f"\n{args.steps} steps x {qat.train.batch_size} x {qat.train.seq_len} tokens, "
          f"{args.eval_batches} held-out batches per corpus")  # fmt: skip
    print(f"{'model':<40} {'val CE':>8} {'Milton CE':>10}")
    for name, (v, m) in rows.items():
        print(f"{name:<40} {v:8.4f} {m:10.4f}")


if __name__ == "__main__":
    main()

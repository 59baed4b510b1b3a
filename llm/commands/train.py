"""`llm train [--config FILE] [key=value ...] [--dry_run]`: train, evaluate, print a sample.

With no `--config`, the default preset `configs/default.yaml` of a source checkout is used
(a small model on Shakespeare, ~10 minutes on 2 CPU cores). `--dry_run` prints parameter
counts, FLOPs per token and memory estimates (`llm.model.accounting.report`) and exits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm.cli_args import add_config_args, config_from_args, int_at_least, refuse

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--dry_run", action="store_true", help="print sizes and FLOPs, no training")
    parser.add_argument(
        "--devices",
        type=int_at_least(1),
        default=None,
        help="with --dry_run: plan per-device memory for this many devices (default: this host's)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model (default: configs/default.yaml)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unused = args.devices is not None and not args.dry_run
    refuse([(unused, "--devices plans memory for --dry_run; training uses this host's devices")])
    if args.config is None and DEFAULT_CONFIG.exists():
        args.config = str(DEFAULT_CONFIG)
    from llm.train.warm_start import warm_start_config

    cfg = warm_start_config(config_from_args(args))  # init_from: the source's architecture
    if args.dry_run:
        import jax

        from llm.model.accounting import report
        from llm.train.build import memory_report

        print(report(cfg))
        print(memory_report(cfg, args.devices or jax.device_count()))
        return 0
    from llm.config.loss import RL_LOSSES

    if cfg.loss.name in RL_LOSSES:  # PPO / GRPO: rollouts, rewards, the RL loop
        from llm.align.rl import train_rl

        result = train_rl(cfg)
        reward = (result["val"] or {}).get("reward", float("nan"))
        print(f"run directory: {result['run_dir']}")
        print(f"step {result['step']} (iteration {result['iteration']}): held-out greedy reward "
              f"{reward:.4f}; wall time {result['wall_s']:.0f} s")  # fmt: skip
        return result["exit_status"]
    from llm.train.loop import train

    result = train(cfg)  # TrainingDiverged: one line and exit status 1 (llm.cli)
    _print_summary(result, cfg)
    if result["stopped"] is None:
        _print_samples(cfg, result["params"])
    return result["exit_status"]  # train.requeue_exit_status when a signal stopped the run


def _print_summary(result: dict, cfg) -> None:
    from llm.train.losses import make_loss

    print(f"run directory: {result['run_dir']}")
    if result["stopped"]:
        print(f"stopped by {result['stopped']} at step {result['step']}; resume by running again")
        return
    loss = result["loss"]
    trained = "no step run" if loss is None else f"train loss {loss:.4f}"
    line = f"step {result['step']}: {trained}"
    if result["val"]:  # the loss's own metrics: perplexity and bits/byte for language models
        line += f"; {make_loss(cfg).summary(result['val'])}"
    print(f"{line}; wall time {result['wall_s']:.0f} s")
    if result["skipped"]:
        print(f"spike skipping: {result['skipped']} updates skipped")


def _print_samples(cfg, params) -> None:
    from llm.tokenizers import load_tokenizer
    from llm.train.sample import sample

    if cfg.eval.samples and not cfg.model.causal:
        print("no samples: model.causal=false is an encoder, which does not generate text")
        return
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    e = cfg.eval
    if cfg.model.arch == "t5" and e.samples:  # no free text: validation sources, decoded
        from llm.eval.seq2seq import seq2seq_samples

        print("--- greedy decoding of validation rows (seq2seq_generate) ---")
        print("\n".join(seq2seq_samples(cfg, params, tokenizer, e.samples)))
        return
    for i in range(e.samples):
        text = sample(
            cfg.model, params, tokenizer, e.prompt, max_new_tokens=e.sample_tokens,
            temperature=e.temperature, top_k=e.top_k, seed=e.seed + i,
        )  # fmt: skip
        print(f"--- sample {i + 1} ---\n{text}")

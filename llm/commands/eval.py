"""`llm eval --checkpoint RUN_DIR [--data CORPUS ...]`: perplexity, bits per byte, samples.

Evaluates the newest checkpoint (or `--step`) of a run on the validation split of its own
corpus, on the out-of-domain corpus `data.eval_corpus` of its config, and on each `--data`
corpus (a built-in name or a path; its validation split, prepared like the training data).
"""

from __future__ import annotations

import argparse
import dataclasses

from llm.cli_args import int_at_least, model_dir_errors, refuse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--data", nargs="*", default=[], help="more corpora to evaluate on")
    parser.add_argument("--batches", type=int_at_least(1),
                        help="batches per corpus (default: eval.batches)")  # fmt: skip
    parser.add_argument("--samples", type=int_at_least(0),
                        help="samples to print (default: eval.samples)")  # fmt: skip
    parser.add_argument("--prompt", help="prompt of the samples (default: eval.prompt)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="perplexity, bits/byte and samples of a run")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.checkpoint import load_model
    from llm.data import make_batches
    from llm.train.evaluate import evaluate
    from llm.train.sample import sample

    refuse([(args.samples == 0 and args.prompt is not None,
             "--prompt is the prompt of the samples, and --samples 0 prints none")])  # fmt: skip
    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint, args.step)
    cfg, params, tokenizer = model.config, model.params, model.tokenizer
    print(f"{args.checkpoint}: {model.layout} model, step {model.step}")
    n = cfg.eval.batches if args.batches is None else args.batches
    sets = [(cfg.data.corpus, cfg, "validation")]
    if cfg.data.eval_corpus:
        sets.append((cfg.data.eval_corpus, cfg, "ood"))
    for corpus in args.data:
        data = dataclasses.replace(cfg.data, corpus=corpus)
        sets.append((corpus, dataclasses.replace(cfg, data=data), "validation"))
    print(f"{'corpus':<24} {'split':<11} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'tokens':>9}")
    for name, c, split in sets:
        m = evaluate(c.model, params, make_batches(c, split, tokenizer), tokenizer, n)
        cols = f"{m['loss']:8.4f} {m['ppl']:9.2f} {m['bpb']:10.4f} {m['tokens']:9.0f}"
        print(f"{name:<24} {split:<11} {cols}")
    e = cfg.eval
    prompt = e.prompt if args.prompt is None else args.prompt
    for i in range(e.samples if args.samples is None else args.samples):
        text = sample(
            cfg.model, params, tokenizer, prompt, max_new_tokens=e.sample_tokens,
            temperature=e.temperature, top_k=e.top_k, seed=e.seed + i,
        )  # fmt: skip
        print(f"--- sample {i + 1} ---\n{text}")
    return 0

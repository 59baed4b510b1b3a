"""`llm eval --checkpoint DIR [--data CORPUS ...]`: perplexity, bits per byte, samples;
`llm eval --checkpoint DIR --tasks ppl,mc:PATH,gen:PATH,...`: named tasks and a results JSON.

Without --tasks: evaluates the newest checkpoint (or `--step`) of a run on the validation
split of its own corpus, on the out-of-domain corpus `data.eval_corpus` of its config, and on
each `--data` corpus (a built-in name or a path; its validation split, prepared like the
training data).

With --tasks: runs each task (`llm.eval.runner` gives the spec grammar) on any model
`llm.checkpoint.load_model` reads (a run, an `llm convert` or Hugging Face directory),
prints a table (task, metric, value, 95% CI, n) and writes the results JSON
(`llm.eval.results`) to --out, by default `DIR/eval/results-<UTC time>.json`; an existing
file is never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from llm.cli_args import int_at_least, model_dir_errors, refuse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="model: a run, `llm convert` or Hugging Face directory")  # fmt: skip
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--data", nargs="*", default=[], help="more corpora to evaluate on")
    parser.add_argument("--batches", type=int_at_least(1),
                        help="batches per corpus (default: eval.batches)")  # fmt: skip
    parser.add_argument("--samples", type=int_at_least(0),
                        help="samples to print (default: eval.samples)")  # fmt: skip
    parser.add_argument("--prompt", help="prompt of the samples (default: eval.prompt)")
    tasks = parser.add_argument_group("tasks (llm.eval.runner)")
    tasks.add_argument("--tasks", help="comma-separated: ppl, ppl:SOURCE, mc:PATH, gen:PATH, "
                       "harness:TASK")  # fmt: skip
    tasks.add_argument("--shots", type=int_at_least(0),
                       help="k-shot examples (mc: default 0; harness: the task's own)")  # fmt: skip
    tasks.add_argument("--seed", type=int_at_least(0), help="shots and bootstrap seed (default 0)")
    tasks.add_argument("--limit", type=int_at_least(1), help="first N items of each task")
    tasks.add_argument("--sample", type=int_at_least(1),
                       help="a seeded random N items of each task (file order kept)")  # fmt: skip
    tasks.add_argument("--batch-size", type=int_at_least(1), help="rows per forward (default 8)")
    tasks.add_argument("--max-new-tokens", type=int_at_least(1),
                       help="generation length of gen tasks (default 64)")  # fmt: skip
    tasks.add_argument("--fewshot-file", help="JSONL pool of k-shot examples of the mc task")
    tasks.add_argument("--include-path", help="directory of local lm-eval task YAMLs")
    tasks.add_argument("--out", help="results JSON (default DIR/eval/results-<time>.json)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="named tasks (--tasks), or perplexity and samples")
    add_arguments(parser)
    parser.set_defaults(func=run)


TASK_FLAGS = ("shots", "seed", "limit", "sample", "batch_size", "max_new_tokens", "fewshot_file",
              "include_path", "out")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.tasks is not None:
        return run_tasks(args)
    given = [f"--{f.replace('_', '-')}" for f in TASK_FLAGS if getattr(args, f) is not None]
    refuse([(given, f"{', '.join(given)} only apply with --tasks")])
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
    if cfg.model.arch == "t5" or cfg.model.prefix_lm:
        evaluate_by_loss(cfg, params, tokenizer, sets, n)
    else:
        head = f"{'loss':>8} {'ppl':>9} {'bits/byte':>10} {'tokens':>9}"
        print(f"{'corpus':<24} {'split':<11} {head}")
        for name, c, split in sets:
            m = evaluate(c.model, params, make_batches(c, split, tokenizer), tokenizer, n)
            cols = f"{m['loss']:8.4f} {m['ppl']:9.2f} {m['bpb']:10.4f} {m['tokens']:9.0f}"
            print(f"{name:<24} {split:<11} {cols}")
    e = cfg.eval
    prompt = e.prompt if args.prompt is None else args.prompt
    n_samples = e.samples if args.samples is None else args.samples
    if not cfg.model.causal:
        print("no samples: model.causal=false is an encoder, which does not generate text")
        return 0
    if cfg.model.arch == "t5":
        refuse([(args.prompt is not None, "--prompt: model.arch=t5 samples decode validation "
                 "sources greedily (llm/eval/seq2seq.py), not a free prompt")])  # fmt: skip
        if n_samples:
            from llm.eval.seq2seq import seq2seq_samples

            print("--- greedy decoding of validation rows (seq2seq_generate) ---")
            print("\n".join(seq2seq_samples(cfg, params, tokenizer, n_samples)))
        return 0
    for i in range(n_samples):
        text = sample(
            cfg.model, params, tokenizer, prompt, max_new_tokens=e.sample_tokens,
            temperature=e.temperature, top_k=e.top_k, seed=e.seed + i,
        )  # fmt: skip
        print(f"--- sample {i + 1} ---\n{text}")
    return 0


def evaluate_by_loss(cfg: Any, params: Any, tokenizer: Any, sets: list, n: int) -> None:
    """T5 and prefix-LM checkpoints are evaluated by their run's own loss: Seq2SeqLoss reads
    encoder-decoder batches, the SFT loss builds each chat's prefix (llm/model/prefix_lm.py);
    the plain `llm.train.evaluate` knows neither."""
    from llm.data import make_batches
    from llm.data.seq2seq import check_seq2seq_data
    from llm.train.losses import make_loss
    from llm.train.trainable import MODEL

    m, name = cfg.model, cfg.loss.name
    refuse([
        (m.arch == "t5" and name != "seq2seq",
         f"model.arch=t5 is evaluated through loss.name=seq2seq; this checkpoint has {name!r}"),
        (m.prefix_lm and name != "sft",
         f"model.prefix_lm=true is evaluated through loss.name=sft, which builds the prefix; "
         f"this checkpoint has {name!r}, which passes none"),
    ])  # fmt: skip
    for corpus, c, split in sets:
        check_seq2seq_data(c, tokenizer)
        loss = make_loss(c)
        batches = make_batches(c, split, tokenizer)
        metrics = loss.evaluate({MODEL: params}, {}, batches, tokenizer=tokenizer, max_batches=n)
        print(f"{corpus:<24} {split:<11} {loss.summary(metrics)}")


def task_settings(args: argparse.Namespace, specs: list) -> Any:
    """The runner's Settings from the flags, refusing combinations that would be ignored."""
    from llm.eval.runner import Settings

    mc = [s for s in specs if s.kind == "mc"]
    refuse([
        (args.data, "--data is the corpora of the plain evaluation; with --tasks use ppl:CORPUS"),
        (any(a is not None for a in (args.batches, args.samples, args.prompt)),
         "--batches, --samples and --prompt are for the plain evaluation, not --tasks"),
        (args.fewshot_file and len(mc) != 1, "--fewshot-file needs exactly one mc task"),
        (args.fewshot_file and not args.shots, "--fewshot-file needs --shots 1 or more"),
        (args.shots and not mc and not any(s.kind == "harness" for s in specs),
         "--shots applies to mc and harness tasks only"),
        (args.limit and args.sample, "--limit and --sample both choose the items: give one"),
        (args.sample and any(s.kind == "harness" for s in specs),
         "--sample applies to mc, gen and ppl:SOURCE tasks (harness tasks take --limit)"),
        (args.include_path and not any(s.kind == "harness" for s in specs),
         "--include-path applies to harness tasks only"),
        (args.max_new_tokens is not None and not any(s.kind == "gen" for s in specs),
         "--max-new-tokens applies to gen tasks only"),
    ])  # fmt: skip
    given = {f: getattr(args, f) for f in TASK_FLAGS[:-1] if getattr(args, f) is not None}
    return Settings(**given, progress=True)


def run_tasks(args: argparse.Namespace) -> int:
    """`--tasks`: parse, load, run every task, print the table, write the results JSON."""
    from llm.checkpoint import load_model
    from llm.eval import results as res
    from llm.eval.runner import load_tasks, parse_tasks
    from llm.eval.runner import run_tasks as run_all

    specs = parse_tasks(args.tasks)
    settings = task_settings(args, specs)
    out = res.default_path(args.checkpoint) if args.out is None else args.out
    refuse([(Path(out).exists(), f"--out {out} exists; results are never overwritten")])
    tasks = load_tasks(specs, settings)
    with model_dir_errors(args.checkpoint):
        model = load_model(args.checkpoint, args.step)
    arch, prefix_lm = model.config.model.arch, model.config.model.prefix_lm
    refuse([
        (arch == "t5", "--tasks score decoder-only models; model.arch=t5 is evaluated without "
         "--tasks (its seq2seq loss and greedy decoding of validation rows)"),
        (prefix_lm, "--tasks run plain causal forwards; model.prefix_lm=true is evaluated "
         "without --tasks (through its SFT loss, which builds the prefix)"),
    ])  # fmt: skip
    print(f"{args.checkpoint}: {model.layout} model, step {model.step}", file=sys.stderr)
    results = run_all(model, tasks, settings)
    record = dataclasses.asdict(settings) | {"tasks": [s.spec for s in specs]}
    record.pop("progress")
    path = res.write_results(res.results_json(res.model_record(model), record, results), out)
    print(res.format_table(results))
    print(f"results: {path}", file=sys.stderr)
    return 0

"""`llm ngram`: a count-based n-gram LM (or an HMM LM) on a config's corpus, scored like training.

llm ngram [--config FILE] [KEY=VALUE ...] --method mkn|kn|katz|addk|hmm [--order 5] [--k 0.01]
          [--discount D] [--states 32 --iters 10 --hmm-tokens 500000] [--eval-batches N]
          [--out results.json]

Counts the train split of `data.*` (tokenized by data.tokenizer, each document BOS ... EOS),
then scores the validation split on the rows `train.seq_len` x `train.batch_size` that the
training run evaluates (llm/baselines/heldout.py): all of them by default, the first
`--eval-batches` batches like `eval.batches` otherwise. Prints validation perplexity, bits per
byte, the counting / training wall time and the number of distinct n-grams (or HMM parameters).
"""

from __future__ import annotations

import argparse
import json
import time

from llm.cli_args import UsageError, add_config_args, finite_float, int_at_least, refuse

METHODS = ("mkn", "kn", "katz", "addk", "hmm")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ngram", help="count-based n-gram LM (Kneser-Ney, Katz, add-k) or HMM: validation bpb"
    )
    add_config_args(parser)
    add = parser.add_argument
    add("--method", choices=METHODS, default="mkn", help="smoothing method, or an HMM LM")
    add("--order", type=int_at_least(1), default=None, help="n of the n-gram model (default 5)")
    add("--k", type=finite_float, default=None, help="addk: pseudo-count per token (1 = Laplace)")
    add("--discount", type=finite_float, default=None, help="kn: fixed discount D in [0, 1]")
    add("--states", type=int_at_least(1), default=32, help="hmm: hidden states")
    add("--iters", type=int_at_least(1), default=10, help="hmm: Baum-Welch iterations")
    add("--hmm-tokens", type=int_at_least(2), default=500_000, help="hmm: training tokens used")
    add("--eval-batches", type=int_at_least(1), default=None,
        help="validation batches scored (default: the whole split)")  # fmt: skip
    add("--out", default=None, metavar="FILE", help="write the results as JSON")
    parser.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """UsageError for options that mean nothing to the chosen method."""
    hmm_opts = (args.states, args.iters, args.hmm_tokens) != (32, 10, 500_000)
    refuse([
        (args.method == "hmm" and args.order is not None, "--order is an n-gram option"),
        (args.method != "hmm" and hmm_opts, "--states/--iters/--hmm-tokens need --method hmm"),
        (args.k is not None and args.method != "addk", "--k is an add-k option"),
        (args.k is not None and args.k <= 0, f"--k {args.k}: the pseudo-count must be > 0"),
        (args.discount is not None and args.method != "kn",
         "--discount fixes the one discount of --method kn"),
        (args.discount is not None and not 0 <= args.discount <= 1,
         f"--discount {args.discount} must lie in [0, 1]"),
    ])  # fmt: skip


def fit(args, train_docs, tokenizer) -> tuple[object, dict]:
    """The fitted model and what to report about its size and fitting time."""
    from llm.baselines.hmm import HMMLanguageModel
    from llm.baselines.ngram import fit_ngram

    V, start = tokenizer.vocab_size, time.perf_counter()
    if args.method == "hmm":
        model, history = HMMLanguageModel.fit(
            train_docs, V, args.states, args.iters, max_tokens=args.hmm_tokens
        )
        size = {"states": args.states, "params": args.states * (1 + args.states + V),
                "hmm_train_tokens": model.trained_tokens,  # of train_tokens: the first chunk
                "train_loglik": history[-1] if history else None}  # fmt: skip
    else:
        order = 5 if args.order is None else args.order
        model = fit_ngram(
            train_docs, order, args.method, V, tokenizer.bos_id,
            k=1.0 if args.k is None else args.k, discount=args.discount,
        )  # fmt: skip
        size = {"order": order, "ngrams": model.counts.num_ngrams()}
    return model, {**size, "fit_seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> int:
    from llm.baselines.heldout import heldout_metrics, split_documents
    from llm.baselines.ngram_counts import Documents
    from llm.cli_args import config_from_args
    from llm.tokenizers import load_tokenizer

    check_args(args)
    cfg = config_from_args(args)
    if cfg.data.format not in ("auto", "txt", "jsonl", "parquet", "hf"):
        raise UsageError(f"data.format={cfg.data.format!r}: n-gram models read plain text corpora")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    shards = split_documents(cfg.data, tokenizer)
    train = Documents.from_shard(shards["train"])
    model, info = fit(args, train, tokenizer)
    start = time.perf_counter()
    logprobs = model.logprobs(Documents.from_shard(shards["validation"]))
    metrics = heldout_metrics(
        logprobs, shards["validation"], tokenizer, cfg.train.seq_len, cfg.train.batch_size,
        max_batches=args.eval_batches,
    )  # fmt: skip
    result = {"method": args.method, "corpus": cfg.data.corpus, "tokenizer": cfg.data.tokenizer,
              "train_tokens": len(train), **info, "eval_seconds": time.perf_counter() - start,
              **{f"val_{k}": v for k, v in metrics.items()}}  # fmt: skip
    print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def print_table(result: dict) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")

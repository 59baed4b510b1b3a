"""`llm data prepare|report|tokenize [--config FILE] [key=value ...]`: the data pipeline by hand.

llm data prepare                   # download/cache the corpus, tokenize it, print statistics
llm data report                    # what each cleaning / dedup stage removed
llm data tokenize --out DIR        # write pre-tokenized shards; then data.corpus=DIR reads them
llm data tasks --out DIR [--seed N] [--tasks a,b]   # instruction / classification sets
llm data preferences --out DIR [--seed N] [--pairs N]  # preference pairs + KTO variant
llm data arithmetic --out DIR [--n N] [--seed S]     # RL prompts with answers (prompts.py)
llm data mc-tasks --out DIR [--seed N] [--tasks a,b] [--choices 4]  # multiple-choice tasks
llm data contamination --tasks DIR_OR_JSONL [--corpus NAME_OR_PATH] [--n 13]  # n-gram overlap

Bad input (a missing corpus, a malformed line) is one line naming the file, exit status 2; a
failed download of a built-in corpus exits 1 (see llm/cli.py).
"""

from __future__ import annotations

import argparse
import time

from llm.cli_args import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare, inspect and tokenize training data")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "prepare": "download/cache the corpus and its token shards, print statistics",
        "report": "print what each cleaning and deduplication stage removed",
        "tokenize": "write pre-tokenized shards of every split to a folder",
    }
    tasks = actions.add_parser("tasks", help="build instruction and classification sets "
                               "from Shakespeare and the KJV (llm/data/tasks.py)")  # fmt: skip
    tasks.add_argument("--out", required=True, help="folder for <task>/{train,test}.jsonl")
    tasks.add_argument("--seed", type=int, default=0, help="seed of the held-out documents")
    tasks.add_argument("--tasks", help="comma-separated task names (default: all)")
    tasks.add_argument("--cache-dir", help="downloads and corpora (default: $LLM_CACHE_DIR)")
    tasks.set_defaults(func=run_tasks)
    help_prefs = "preference pairs and a KTO variant from Shakespeare and the KJV"
    prefs = actions.add_parser("preferences", help=help_prefs)
    prefs.add_argument("--out", required=True, help="folder for {train,validation}.jsonl, kto/")
    prefs.add_argument("--seed", type=int, default=0, help="seed of the split and the pairs")
    prefs.add_argument("--pairs", type=int, default=2000, help="pairs drawn per set (both splits)")
    prefs.add_argument("--sets", help="comma-separated set names (default: all)")
    prefs.add_argument("--max-chars", type=int, help="longest chosen/rejected text (default: any)")
    prefs.add_argument("--cache-dir", help="downloads and corpora (default: $LLM_CACHE_DIR)")
    prefs.set_defaults(func=run_preferences)
    arith = actions.add_parser("arithmetic", help="write RL prompts 'What is a op b?' with "
                               "answers (data.format=prompts, llm/data/prompts.py)")  # fmt: skip
    arith.add_argument("--out", required=True, help="folder for arithmetic.jsonl")
    arith.add_argument("--n", type=int, default=2000, help="distinct prompts (default 2000)")
    arith.add_argument("--seed", type=int, default=0, help="seed of the operands")
    arith.add_argument("--max-operand", type=int, default=20, help="operands in [0, this]")
    arith.add_argument("--ops", default="+,-", help="comma-separated operators of + - *")
    arith.set_defaults(func=run_arithmetic)
    register_mc_tasks(actions)
    register_contamination(actions)
    for name, text in helps.items():
        sub = actions.add_parser(name, help=text)
        add_config_args(sub)
        if name == "tokenize":
            sub.add_argument("--out", required=True, help="folder for the shards and report.json")
        sub.set_defaults(func=run)


def load_tokenizer_for(name: str):
    """The configured tokenizer (byte-level unless the tokenizer package provides more)."""
    import llm.tokenizers as tokenizers

    if hasattr(tokenizers, "load_tokenizer"):
        return tokenizers.load_tokenizer(name)
    if name != "byte":
        raise ValueError(f"data.tokenizer={name!r}: only 'byte' is available in this build")
    return tokenizers.ByteTokenizer()


def run_tasks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm.data.tasks import build_tasks, parse_task_names

    names = parse_task_names(args.tasks)
    start = time.perf_counter()
    manifest = build_tasks(Path(args.out), args.seed, names, args.cache_dir)
    print(f"{'task':<22} {'kind':<15} {'train':>8} {'test':>7} {'labels':>6}  dropped")
    for name, t in manifest["tasks"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "-"
        labels = "-" if t["labels"] is None else t["labels"]
        print(
            f"{name:<22} {t['kind']:<15} {t['counts']['train']:>8} {t['counts']['test']:>7} "
            f"{labels:>6}  {dropped}"
        )
    plays = manifest["sources"].get("shakespeare")
    if plays:
        skipped = sorted(plays["skipped_documents"])
        print(
            f"shakespeare: {plays['unparsable_paragraphs']} unparsable paragraphs (counted "
            f"per play in manifest.json), skipped documents: {skipped}"
        )
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}/manifest.json (seed {args.seed}) in {seconds:.1f} s")
    return 0


def register_mc_tasks(actions: argparse._SubParsersAction) -> None:
    help_mc = "multiple-choice tasks (which play, book, fortune category), llm/data/mc_tasks.py"
    mc = actions.add_parser("mc-tasks", help=help_mc)
    mc.add_argument("--out", required=True, help="folder for <task>/{test,fewshot}.jsonl")
    mc.add_argument("--seed", type=int, default=0, help="seed of the split, samples and choices")
    mc.add_argument("--tasks", help="comma-separated: which_play,which_book,which_fortune")
    mc.add_argument("--choices", type=int, default=4, help="choices per question (default 4)")
    mc.add_argument("--max-test", type=int, default=1000, help="test questions per task at most")
    mc.add_argument("--max-fewshot", type=int, default=1000, help="few-shot questions at most")
    mc.add_argument("--play-split", default="default-run", choices=["default-run", "scenes"],
                    help="which_play test text: the default run's held-out plays, or the "
                    "held-out scenes of `llm data tasks`")  # fmt: skip
    mc.add_argument("--fortunes", help="an installed fortunes folder instead of the .deb")
    mc.add_argument("--cache-dir", help="downloads and corpora (default: $LLM_CACHE_DIR)")
    mc.set_defaults(func=run_mc_tasks)


def run_mc_tasks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm.data.mc_tasks import MC_TASKS, MCOptions, build_mc_tasks, format_manifest
    from llm.data.tasks import parse_task_names

    names = parse_task_names(args.tasks, MC_TASKS)
    opts = MCOptions(args.seed, args.choices, args.max_test, args.max_fewshot, args.play_split,
                     args.cache_dir, args.fortunes)  # fmt: skip
    start = time.perf_counter()
    manifest = build_mc_tasks(Path(args.out), names, opts)
    print(format_manifest(manifest))
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}/manifest.json (seed {args.seed}) in {seconds:.1f} s")
    return 0


def register_contamination(actions: argparse._SubParsersAction) -> None:
    cont = actions.add_parser("contamination", help="word n-gram overlap of task items with "
                              "a training corpus (llm/eval/contamination.py)")  # fmt: skip
    cont.add_argument("--tasks", required=True, help="a task JSONL, or a folder of them")
    cont.add_argument("--corpus", help="built-in corpus or path (default: data.corpus)")
    cont.add_argument(
        "--split",
        default="train",
        choices=["train", "validation", "all"],
        help="documents of the corpus to check against (data.val_fraction split)",
    )
    cont.add_argument("--n", type=int, default=13, help="words per n-gram (default 13)")
    cont.add_argument("--threshold", type=float, default=0.5, help="flag at this fraction")
    cont.add_argument("--out", help="JSON report (default: <tasks>/contamination-*.json)")
    add_config_args(cont)
    cont.set_defaults(func=run_contamination)


def run_contamination(args: argparse.Namespace) -> int:
    from llm.eval.contamination import run_command

    return run_command(args, config_from_args(args))


def run_arithmetic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm.data.prompts import write_arithmetic

    ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    path = write_arithmetic(Path(args.out), args.n, args.seed, args.max_operand, ops)
    print(f"wrote {args.n} prompts to {path}; train with data.corpus={path} data.format=prompts")
    return 0


def run_preferences(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm.data.preference_sets import build_preferences, parse_set_names

    names = parse_set_names(args.sets)
    start = time.perf_counter()
    manifest = build_preferences(
        Path(args.out), args.seed, args.pairs, names, args.cache_dir, args.max_chars
    )
    print(f"{'set':<22} {'train':>7} {'validation':>10}  rejections; dropped")
    for name, t in manifest["sets"].items():
        how = ", ".join(f"{k} {v}" for k, v in t["rejections"].items())
        dropped = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "-"
        print(f"{name:<22} {t['counts']['train']:>7} {t['counts']['validation']:>10}  "
              f"{how}; {dropped}")  # fmt: skip
    kto = manifest["kto"]
    print(f"kto/: train {kto['train']['records']} ({kto['train']['desirable']} desirable), "
          f"validation {kto['validation']['records']} ({kto['validation']['desirable']} "
          "desirable)")  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}/manifest.json (seed {args.seed}) in {seconds:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm.data import load_shards
    from llm.data.tokenized import build_shards

    cfg = config_from_args(args)
    tokenizer = load_tokenizer_for(cfg.data.tokenizer)
    if args.action == "tokenize":
        report = build_shards(cfg.data, cfg.data.corpus, tokenizer, Path(args.out))
        print(report.format())
        print(f"wrote shards to {args.out}; train on them with data.corpus={args.out}")
        return 0
    corpora = [False] + ([True] if cfg.data.eval_corpus else [])
    for ood in corpora:
        start = time.perf_counter()
        shards, report, key = load_shards(cfg.data, tokenizer, ood=ood)
        if args.action == "report":
            print(report.format() + "\n")
            continue
        seconds = time.perf_counter() - start
        print(f"corpus {report.source} (cache key {key}, ready in {seconds:.1f} s):")
        for name, shard in shards.items():
            print(f"  {name:<11} {shard.num_docs:>6} documents {shard.num_tokens:>12,} tokens")
    return 0

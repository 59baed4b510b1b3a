"""`llm constitutional`: preference pairs from the model's own critiques and revisions.

llm constitutional --checkpoint models/smollm2 --prompts prompts.jsonl --out pairs.jsonl
llm constitutional --checkpoint RUN --prompts p.jsonl --out pairs.jsonl --rounds 2 \\
    --principles my_constitution.yaml --max-new-tokens 96 --temperature 0.7 --seed 1

Prompts are JSONL, `{"prompt": str}` or `{"messages": [...]}` per line (the RL prompt format,
llm/data/prompts.py; an "answer" field is ignored). Each record written is
`{"prompt", "chosen": the final revision, "rejected": the first answer, "principle",
"critique", "rounds", "origin"}`, readable by `data.format=preference` for DPO. The loop is
llm/align/constitutional.py; the default constitution is llm/align/principles.py. The
summary line (stderr) counts every prompt that gave no pair, and why.
"""

from __future__ import annotations

import argparse
import sys

from llm.cli_args import add_config_args, int_at_least, model_dir_errors, refuse
from llm.commands.generate import add_sampling_args, sampling_params

DEFAULT_MAX_LEN = 2048  # the engine's context when the model's is longer (KV cache memory)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "constitutional", help="self-critique and revision against principles -> DPO pairs"
    )
    parser.add_argument("--checkpoint", metavar="DIR", help="run or model directory")
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    add_config_args(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE", help="prompts JSONL")
    parser.add_argument("--out", required=True, metavar="FILE", help="preference JSONL to write")
    parser.add_argument("--rounds", type=int_at_least(1), default=1,
                        help="critique-revision rounds per prompt")  # fmt: skip
    parser.add_argument("--principles", metavar="FILE",
                        help="constitution YAML/JSON (default: the built-in one)")  # fmt: skip
    parser.add_argument("--batch-size", type=int_at_least(1), default=8,
                        help="prompts generated together")  # fmt: skip
    parser.add_argument("--max-len", type=int_at_least(2), default=None,
                        help=f"context of a transcript (default: the model's, at most "
                        f"{DEFAULT_MAX_LEN})")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.align.constitutional import Settings, self_critique, write_records
    from llm.align.principles import DEFAULT_PRINCIPLES, load_principles
    from llm.cli_args import config_from_args
    from llm.data.prompts import read_prompt_records
    from llm.inference import Engine
    from llm.inference.loading import model_for_serving

    refuse([
        (args.checkpoint and (args.config or args.overrides),
         "--config and KEY=VALUE overrides give random weights, a --checkpoint brings its own "
         "config: give one or the other"),
        (not args.checkpoint and not args.config and not args.overrides,
         "give --checkpoint DIR (a trained model), or --config FILE for random weights"),
        (args.stop, "--stop does not apply: every turn ends at the chat template's end of turn"),
    ])  # fmt: skip
    principles = load_principles(args.principles) if args.principles else DEFAULT_PRINCIPLES
    prompts = [(messages, where) for messages, _, where in read_prompt_records(args.prompts)]
    settings = Settings(args.rounds, args.max_new_tokens or 128, sampling_params(args),
                        args.batch_size)  # fmt: skip
    config = None if args.checkpoint else config_from_args(args)
    with model_dir_errors(args.checkpoint):
        model = model_for_serving(args.checkpoint, args.step, config)
    max_len = args.max_len or min(model.config.model.max_seq_len, DEFAULT_MAX_LEN)
    engine = Engine(model.config.model, model.params, model.tokenizer, max_len=max_len)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), unit="prompt", file=sys.stderr)
    records, report = self_critique(engine, prompts, principles, settings,
                                    bar.update if bar is not None else None)  # fmt: skip
    if bar is not None:
        bar.close()
    write_records(args.out, records)
    print(f"wrote {args.out}: {report.summary()}", file=sys.stderr)
    return 0

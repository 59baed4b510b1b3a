"""`llm generate --checkpoint RUN_DIR --prompt TEXT`: text from a trained model, streamed.

llm generate --checkpoint runs/tiny --prompt "Once upon a time" --temperature 0.8 --top-p 0.9
llm generate --checkpoint runs/tiny --chat                 # interactive chat, turn by turn
llm generate --checkpoint runs/tiny --chat --prompt "Hi"   # one chat turn, then exit
llm generate --config configs/tiny.yaml --prompt "hi"      # random weights (smoke test)
llm generate --checkpoint runs/tiny --prompt "The" --num-beams 4 --length-penalty 1.0
llm generate --checkpoint models/smollm2 --adapter runs/lora --chat   # base + a LoRA adapter
llm generate --checkpoint models/smollm2 --prompt "The" --kv-cache int8   # int8 KV cache

Arguments are checked before the model loads: impossible values (`--top-p 2`, a prompt plus
`--max-new-tokens` longer than the context) and arguments the chosen mode would ignore
(`--system` without `--chat`, sampling settings with `--num-beams`) are errors, never clamped
or dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from llm.cli_args import (
    UsageError,
    add_config_args,
    finite_float,
    int_at_least,
    model_dir_errors,
    refuse,
)

DEFAULT_MAX_NEW_TOKENS = 128  # when --max-new-tokens is not given (fewer if the context is full)
# flag -> (SamplingParams field, type, default, help)
SAMPLING_FLAGS = {
    "--temperature": ("temperature", finite_float, 0.8, "0 = greedy"),
    "--top-k": ("top_k", int, 0, "keep the k most likely (0 = off)"),
    "--top-p": ("top_p", finite_float, 1.0, "nucleus mass (1 = off)"),
    "--min-p": ("min_p", finite_float, 0.0, "relative probability floor"),
    "--typical-p": ("typical_p", finite_float, 1.0, "locally typical mass"),
    "--repetition-penalty": ("repetition_penalty", finite_float, 1.0, "CTRL penalty"),
    "--frequency-penalty": ("frequency_penalty", finite_float, 0.0, "per occurrence"),
    "--presence-penalty": ("presence_penalty", finite_float, 0.0, "once if present"),
    "--watermark": ("watermark_delta", finite_float, 0.0, "green-list bias delta"),
    "--seed": ("seed", int, 0, "sampling seed"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text from a checkpoint (or chat)")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="training run directory")
    parser.add_argument("--step", type=int_at_least(0), help="checkpoint step (default: newest)")
    parser.add_argument("--adapter", metavar="DIR", help="merge this adapter into the "
                        "--checkpoint: a LoRA run or a Hugging Face PEFT directory")  # fmt: skip
    add_config_args(parser)
    parser.add_argument("--prompt", help="prompt text (default: read stdin); with --chat, "
                        "the one user turn to answer")  # fmt: skip
    parser.add_argument("--chat", action="store_true", help="chat with the template")
    parser.add_argument("--system", help="system message for --chat")
    add_sampling_args(parser)
    parser.add_argument("--num-samples", type=int_at_least(1), default=1,
                        help="completions of the prompt")  # fmt: skip
    parser.add_argument("--num-beams", type=int_at_least(0), default=0,
                        help="beam search with this width (0 = sample)")  # fmt: skip
    parser.add_argument("--length-penalty", type=finite_float, default=1.0,
                        help="with --num-beams: beam score / len^x")  # fmt: skip
    parser.add_argument("--kv-cache", choices=("auto", "int8"), default=None,
                        help="KV-cache storage (model.kv_cache_dtype): auto = the activation "
                        "dtype; int8 = codes + a scale per cached vector, ~4x less memory "
                        "than float32 (default: the model's config)")  # fmt: skip
    parser.set_defaults(func=run)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int_at_least(1), default=None,
                   help=f"tokens to generate at most (default: {DEFAULT_MAX_NEW_TOKENS}, or "
                   "what the context leaves if less)")  # fmt: skip
    for flag, (field, kind, default, text) in SAMPLING_FLAGS.items():
        g.add_argument(flag, dest=field, type=kind, default=default, help=text,
                       metavar=flag[2:].upper().replace("-", "_"))  # fmt: skip
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace, seed_offset: int = 0):
    """The settings of the sampling flags; an impossible one is a UsageError naming its flag."""
    from llm.inference.sampling import SamplingError, SamplingParams

    values = {field: getattr(args, field) for field, *_ in SAMPLING_FLAGS.values()}
    try:
        return SamplingParams(**(values | {"seed": values["seed"] + seed_offset}))
    except SamplingError as err:
        flags = {field: flag for flag, (field, *_) in SAMPLING_FLAGS.items()}
        problems = [text.replace(f"{field}=", f"{flags[field]} ") for field, text in err.problems]
        raise UsageError("; ".join(problems)) from None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses arguments the chosen mode would ignore, before anything loads."""
    beams = args.num_beams > 0
    changed = [f for f, (field, _, default, _) in SAMPLING_FLAGS.items()
               if getattr(args, field) != default]  # fmt: skip
    refuse([
        (args.checkpoint and (args.config or args.overrides),
         "--config and KEY=VALUE overrides give random weights, a --checkpoint brings its own "
         "config: give one or the other"),
        (not args.checkpoint and not args.config and not args.overrides,
         "give --checkpoint RUN_DIR (a trained model), or --config FILE for random weights"),
        (args.step is not None and not args.checkpoint,
         "--step picks a checkpoint of --checkpoint RUN_DIR, and none was given"),
        (args.adapter and not args.checkpoint,
         "--adapter DIR adapts a base model: give the base as --checkpoint DIR"),
        (args.system is not None and not args.chat, "--system is for --chat; add --chat"),
        (args.chat and beams, "--num-beams does not apply to --chat; drop one of them"),
        (args.num_samples != 1 and (args.chat or beams),
         "--num-samples applies to sampled completions, not to --chat or --num-beams"),
        (beams and changed, f"beam search is deterministic: {', '.join(changed)} would be "
         "ignored with --num-beams; drop them"),
        (beams and args.stop, "--stop is not supported with --num-beams"),
        (args.length_penalty != 1.0 and not beams, "--length-penalty needs --num-beams N"),
    ])  # fmt: skip
    sampling_params(args)


def run(args: argparse.Namespace) -> int:
    from llm.cli_args import config_from_args
    from llm.inference import Engine
    from llm.inference.loading import model_for_serving

    check_arguments(args)
    config = None if args.checkpoint else config_from_args(args)
    with model_dir_errors(args.checkpoint):
        model = model_for_serving(args.checkpoint, args.step, config)
    params = model.params
    if args.adapter:
        from llm.inference.adapters import load_adapter, merged

        with model_dir_errors(args.adapter):
            params = merged(params, load_adapter(args.adapter, model))
    cfg = model.config.model
    if args.kv_cache is not None:
        cfg = dataclasses.replace(cfg, kv_cache_dtype=args.kv_cache)
    engine = Engine(cfg, params, model.tokenizer)
    if args.chat:
        return chat(engine, args)
    if args.prompt is None and sys.stdin.isatty():
        print("reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    return complete(engine, args, prompt)


def max_new_tokens(engine, args: argparse.Namespace, prompt_len: int, what: str) -> int:
    """--max-new-tokens, or the default; a UsageError if the context cannot hold it."""
    room, context = engine.max_len - prompt_len, engine.max_len
    if room < 1:
        raise UsageError(f"{what} has {prompt_len} tokens, which fills the model's context of "
                         f"{context} tokens: shorten it")  # fmt: skip
    wanted = args.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, room)
    if wanted > room:
        raise UsageError(f"{what} has {prompt_len} tokens; with --max-new-tokens {wanted} that "
                         f"exceeds the model's context of {context} tokens: lower "
                         f"--max-new-tokens to {room} or shorten the {what}")  # fmt: skip
    return wanted


def complete(engine, args: argparse.Namespace, prompt: str) -> int:
    from llm.inference import StopCriteria
    from llm.inference.beam import beam_search

    tok = engine.tokenizer
    ids = [tok.bos_id, *tok.encode(prompt)]
    limit = max_new_tokens(engine, args, len(ids), "prompt")
    if args.num_beams > 0:
        hyps = beam_search(engine, ids, num_beams=args.num_beams, eos_id=tok.eos_id,
                           max_new_tokens=limit, length_penalty=args.length_penalty)  # fmt: skip
        for h in hyps:
            print(f"--- score {h.score:.4f} ---\n{prompt}{tok.decode(list(h.tokens))}")
        return 0
    stop = StopCriteria(limit, (tok.eos_id,), tuple(args.stop))
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(prompt, end="", flush=True)
        for event in engine.stream([ids], sampling_params(args, i), stop):
            print(event.text, end="", flush=True)
        print()
    return 0


def chat(engine, args: argparse.Namespace) -> int:
    """Answers --prompt as one turn, or reads user turns from stdin until EOF."""
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        reply(engine, args, messages, 0)
        return 0
    turn = 0
    while True:
        try:
            user = input("user> ")
        except EOFError:
            print()
            return 0
        messages.append({"role": "user", "content": user})
        print("assistant> ", end="", flush=True)
        messages.append({"role": "assistant", "content": reply(engine, args, messages, turn)})
        turn += 1


def reply(engine, args: argparse.Namespace, messages: list[dict], turn: int) -> str:
    """Streams the assistant's answer to `messages` to stdout; returns its text."""
    from llm.inference import StopCriteria
    from llm.inference.loading import chat_stops
    from llm.tokenizers.chat import apply_chat

    tok = engine.tokenizer
    ids = apply_chat(tok, messages, add_generation_prompt=True)
    stop_ids, stop_strings = chat_stops(tok)
    limit = max_new_tokens(engine, args, len(ids), "the conversation")
    stop = StopCriteria(limit, stop_ids, (*stop_strings, *args.stop))
    text = []
    for event in engine.stream([ids], sampling_params(args, turn), stop):
        text.append(event.text)
        print(event.text, end="", flush=True)
    print()
    return "".join(text)

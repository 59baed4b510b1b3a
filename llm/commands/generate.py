"""`llm generate --checkpoint RUN_DIR --prompt TEXT`: text from a trained model, streamed.

llm generate --checkpoint runs/tiny --prompt "Once upon a time" --temperature 0.8 --top-p 0.9
llm generate --checkpoint runs/tiny --chat                 # interactive chat, turn by turn
llm generate --config configs/tiny.yaml --prompt "hi"      # random weights (smoke test)
llm generate --checkpoint runs/tiny --prompt "The" --num-beams 4 --length-penalty 1.0
"""

from __future__ import annotations

import argparse
import sys

from llm.cli_args import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text from a checkpoint (or chat)")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="training run directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    add_config_args(parser)
    parser.add_argument("--prompt", help="prompt text (default: read stdin)")
    parser.add_argument("--chat", action="store_true", help="interactive chat with the template")
    parser.add_argument("--system", help="system message for --chat")
    add_sampling_args(parser)
    parser.add_argument("--num-samples", type=int, default=1, help="completions of the prompt")
    parser.add_argument("--num-beams", type=int, default=0, help="beam search with this width")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score / len^x")
    parser.set_defaults(func=run)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="relative probability floor")
    g.add_argument("--typical-p", type=float, default=1.0, help="locally typical mass")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="per occurrence")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="once if present")
    g.add_argument("--watermark", type=float, default=0.0, help="green-list bias delta")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace, seed_offset: int = 0):
    from llm.inference import SamplingParams

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        watermark_delta=args.watermark, seed=args.seed + seed_offset,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from llm.cli_args import config_from_args
    from llm.inference import Engine
    from llm.inference.loading import load_model

    config = None if args.checkpoint else config_from_args(args)
    try:
        model = load_model(args.checkpoint, args.step, config)
        engine = Engine(model.config.model, model.params, model.tokenizer)
        if args.chat:
            return chat(engine, args)
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        return complete(engine, args, prompt)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def complete(engine, args: argparse.Namespace, prompt: str) -> int:
    from llm.inference import StopCriteria
    from llm.inference.beam import beam_search

    tok = engine.tokenizer
    ids = [tok.bos_id, *tok.encode(prompt)]
    if args.num_beams > 0:
        hyps = beam_search(engine, ids, num_beams=args.num_beams, eos_id=tok.eos_id,
                           max_new_tokens=args.max_new_tokens,
                           length_penalty=args.length_penalty)  # fmt: skip
        for h in hyps:
            print(f"--- score {h.score:.4f} ---\n{prompt}{tok.decode(list(h.tokens))}")
        return 0
    stop = StopCriteria(args.max_new_tokens, (tok.eos_id,), tuple(args.stop))
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(prompt, end="", flush=True)
        for event in engine.stream([ids], sampling_params(args, i), stop):
            print(event.text, end="", flush=True)
        print()
    return 0


def chat(engine, args: argparse.Namespace) -> int:
    """Reads user turns from stdin until EOF; streams each assistant reply."""
    from llm.inference import StopCriteria
    from llm.inference.loading import chat_stops
    from llm.tokenizers.chat import apply_chat

    tok = engine.tokenizer
    messages = [{"role": "system", "content": args.system}] if args.system else []
    stop_ids, stop_strings = chat_stops(tok)
    stop = StopCriteria(args.max_new_tokens, stop_ids, (*stop_strings, *args.stop))
    turn = 0
    while True:
        try:
            user = input("user> ")
        except EOFError:
            print()
            return 0
        messages.append({"role": "user", "content": user})
        ids = apply_chat(tok, messages, add_generation_prompt=True)
        print("assistant> ", end="", flush=True)
        reply = []
        for event in engine.stream([ids], sampling_params(args, turn), stop):
            reply.append(event.text)
            print(event.text, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})
        turn += 1

"""`llm tokenizer train|encode|decode|inspect`: train tokenizers and look inside them.

Examples:
    llm tokenizer train shakespeare --algo spm-unigram --vocab-size 8000 --out tok/shakespeare
    llm tokenizer train my/*.txt --algo bpe --vocab-size 4096 --out tok/mine
    llm tokenizer encode --tokenizer tok/shakespeare.model "To be, or not to be"
    llm tokenizer decode --tokenizer tok/shakespeare.model 812 29 4011
    llm tokenizer inspect tok/shakespeare.model
"""

from __future__ import annotations

import argparse
import sys
import time

from llm.tokenizers.train import ALGORITHMS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, apply and inspect tokenizers")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a tokenizer on text files")
    train.add_argument(
        "files", nargs="+", help="UTF-8 text files (read line by line), or 'shakespeare'/'milton'"
    )
    train.add_argument("--algo", choices=ALGORITHMS, default="spm-unigram")
    train.add_argument("--vocab-size", type=int, required=True, help="tokens, specials included")
    train.add_argument("--out", required=True, help="output path (.json/.model added if absent)")
    train.add_argument("--min-frequency", type=int, default=0, help="bpe/wordpiece: min pair count")
    train.add_argument(
        "--character-coverage",
        type=float,
        default=None,
        help="spm-*/unigram: share of character occurrences kept as pieces",
    )
    train.set_defaults(func=_friendly(run_train))

    encode = sub.add_parser("encode", help="print the ids (and pieces) of a text")
    encode.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    encode.add_argument("--tokenizer", required=True, help="'byte', a .model or tokenizer.json")
    encode.add_argument("--pieces", action="store_true", help="also print each id's piece")
    encode.set_defaults(func=_friendly(run_encode))

    decode = sub.add_parser("decode", help="print the text of token ids")
    decode.add_argument("ids", nargs="+", type=int)
    decode.add_argument("--tokenizer", required=True, help="'byte', a .model or tokenizer.json")
    decode.set_defaults(func=_friendly(run_decode))

    inspect = sub.add_parser("inspect", help="vocabulary size, special ids, a sample encoding")
    inspect.add_argument("tokenizer", help="'byte', a .model or tokenizer.json")
    inspect.add_argument("--sample", default="Hello, world! Wherefore art thou?")
    inspect.set_defaults(func=_friendly(run_inspect))


def _friendly(run):
    """Bad input (missing file, bad spec, invalid UTF-8) prints one line and exits 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"llm tokenizer {args.action}: {e}", file=sys.stderr)
            return 2

    return wrapped


def run_train(args: argparse.Namespace) -> int:
    from llm.tokenizers.train import train_tokenizer

    start = time.perf_counter()
    out = train_tokenizer(
        args.algo,
        args.files,
        args.vocab_size,
        args.out,
        min_frequency=args.min_frequency,
        character_coverage=args.character_coverage,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(f"trained {args.algo} ({args.vocab_size} tokens) in {time.perf_counter() - start:.1f}s")
    print(f"saved {out}  (use it with: data.tokenizer={out})")
    return 0


def _piece(tok, i: int) -> str:
    lookup = getattr(tok, "id_to_token", None)
    if lookup is not None:
        return lookup(i)
    return repr(tok.decode([i]))


def run_encode(args: argparse.Namespace) -> int:
    from llm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    ids = tok.encode(text)
    print(" ".join(map(str, ids)))
    if args.pieces:
        print(" ".join(f"{i}:{_piece(tok, i)}" for i in ids))
    print(f"{len(ids)} tokens, {len(text)} characters", file=sys.stderr)
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from llm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    bad = [i for i in args.ids if not 0 <= i < tok.vocab_size]
    if bad:
        print(f"ids out of range [0, {tok.vocab_size}): {bad}", file=sys.stderr)
        return 2
    print(tok.decode(args.ids))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from llm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.sample)
    back = tok.decode(ids)
    print(f"type        {type(tok).__name__}")
    print(f"vocab_size  {tok.vocab_size}")
    print(f"bos/eos/pad {tok.bos_id} / {tok.eos_id} / {tok.pad_id}")
    print(f"sample      {args.sample!r} -> {len(ids)} tokens")
    print(f"pieces      {[_piece(tok, i) for i in ids]}")
    print(f"round trip  {'exact' if back == args.sample else repr(back)}")
    return 0

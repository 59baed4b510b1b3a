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
from pathlib import Path

from llm.cli_args import UsageError, finite_float, int_at_least, refuse
from llm.tokenizers.train import ALGORITHMS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, apply and inspect tokenizers")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a tokenizer on text files")
    train.add_argument(
        "files", nargs="+", help="UTF-8 text files (read line by line), or 'shakespeare'/'milton'"
    )
    train.add_argument("--algo", choices=ALGORITHMS, default="spm-unigram")
    train.add_argument("--vocab-size", type=int_at_least(1), required=True,
                       help="tokens, specials included")  # fmt: skip
    train.add_argument("--out", required=True, help="output path (.json/.model added if absent)")
    train.add_argument("--min-frequency", type=int_at_least(0), default=None,
                       help="bpe/wordpiece: min pair count (default 0)")  # fmt: skip
    train.add_argument(
        "--character-coverage",
        type=finite_float,
        default=None,
        help="spm-*/unigram: share of character occurrences kept as pieces",
    )
    train.set_defaults(func=run_train)

    encode = sub.add_parser("encode", help="print the ids (and pieces) of a text")
    encode.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    encode.add_argument("--tokenizer", required=True, help="'byte', a .model or tokenizer.json")
    encode.add_argument("--pieces", action="store_true", help="also print each id's piece")
    encode.set_defaults(func=run_encode)

    decode = sub.add_parser("decode", help="print the text of token ids")
    decode.add_argument("ids", nargs="+", type=int)
    decode.add_argument("--tokenizer", required=True, help="'byte', a .model or tokenizer.json")
    decode.set_defaults(func=run_decode)

    inspect = sub.add_parser("inspect", help="vocabulary size, special ids, a sample encoding")
    inspect.add_argument("tokenizer", help="'byte', a .model or tokenizer.json")
    inspect.add_argument("--sample", default="Hello, world! Wherefore art thou?")
    inspect.set_defaults(func=run_inspect)


def run_train(args: argparse.Namespace) -> int:
    """Trains, then says how many tokens the tokenizer really has (too little text gives
    fewer than --vocab-size: the trainers stop when nothing is left to merge or keep)."""
    import tempfile

    from llm.data.corpora import text_files
    from llm.tokenizers import load_tokenizer
    from llm.tokenizers.train import train_tokenizer

    check_train_arguments(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        out = train_tokenizer(
            args.algo,
            text_files(args.files, Path(workdir)),
            args.vocab_size,
            args.out,
            min_frequency=args.min_frequency or 0,
            character_coverage=args.character_coverage,
            log=lambda line: print(line, file=sys.stderr),
        )
    seconds = time.perf_counter() - start
    size = load_tokenizer(str(out)).vocab_size
    print(f"trained {args.algo} ({size} tokens) in {seconds:.1f}s")
    if size < args.vocab_size:
        print(f"note: {size} tokens, not the {args.vocab_size} asked for: the text has no more "
              "to learn; give more text for a larger vocabulary")  # fmt: skip
    print(f"saved {out}  (use it with: data.tokenizer={out})")
    return 0


def check_train_arguments(args: argparse.Namespace) -> None:
    """Options of one family of trainers are refused for the others, not ignored."""
    refuse([
        (args.min_frequency is not None and args.algo not in ("bpe", "wordpiece"),
         f"--min-frequency applies to bpe and wordpiece, not {args.algo}"),
        (args.character_coverage is not None and args.algo in ("bpe", "wordpiece"),
         f"--character-coverage applies to spm-bpe, spm-unigram and unigram, not {args.algo}"),
        (args.character_coverage is not None and not 0 < args.character_coverage <= 1,
         f"--character-coverage {args.character_coverage} must be in (0, 1]"),
    ])  # fmt: skip


def _piece(tok, i: int) -> str:
    lookup = getattr(tok, "id_to_token", None)
    if lookup is not None:
        return lookup(i)
    return repr(tok.decode([i]))


def run_encode(args: argparse.Namespace) -> int:
    from llm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else _read_stdin()
    ids = tok.encode(text)
    print(" ".join(map(str, ids)))
    if args.pieces:
        print(" ".join(f"{i}:{_piece(tok, i)}" for i in ids))
    print(f"{len(ids)} tokens, {len(text)} characters", file=sys.stderr)
    return 0


def _read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as err:
        raise UsageError(f"stdin is not valid UTF-8 (byte {err.start}: {err.reason})") from None


def run_decode(args: argparse.Namespace) -> int:
    from llm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    bad = [i for i in args.ids if not 0 <= i < tok.vocab_size]
    refuse([(bad, f"ids out of range [0, {tok.vocab_size}) of {args.tokenizer}: {bad[:8]}")])
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

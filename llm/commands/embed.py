"""`llm embed --model DIR --input FILE.txt --out FILE.npy`: one sentence embedding per line.

Every non-empty line of the UTF-8 input becomes one row of a float32 [N, D] array saved with
`numpy.save`, in input order; empty (or whitespace-only) lines have no row, and their count
is reported. Each line is tokenized as [CLS] text [SEP] (the tokenizer's BOS / EOS), cut to
--max-len tokens (default: the model's max_seq_len; the count of cut lines is reported),
run through the model, pooled (--pooling mean: over the real tokens, as Sentence-BERT and
all-MiniLM-L6-v2; cls: the first token's state) and L2-normalised (unless --no-normalize).
The pooling and the model are `llm.model.pooling.sentence_embeddings`.

    MINILM=$(python -c 'from llm.interop import minilm_dir; print(minilm_dir())')
    llm convert from-hf "$MINILM" models/minilm      # or pass "$MINILM" to --model directly
    llm embed --model models/minilm --input sentences.txt --out sentences.npy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm.cli_args import int_at_least, model_dir_errors, refuse

POOLINGS = ("mean", "cls")
LENGTH_BUCKET = 16  # rows are padded to a multiple of this many tokens: few distinct compiles


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="sentence embeddings (mean / CLS pooled, normalised) of a text file"
    )
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="model directory (llm convert output, run directory)")  # fmt: skip
    parser.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text, one per line")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .npy, [N, D] float32")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="mean over real tokens (default) or the [CLS] token")  # fmt: skip
    parser.add_argument("--batch", type=int_at_least(1), default=32, help="lines per batch")
    parser.add_argument("--max-len", type=int_at_least(3), metavar="N",
                        help="tokens per line with [CLS]/[SEP] (default: max_seq_len)")  # fmt: skip
    parser.add_argument("--no-normalize", action="store_true", help="keep the pooled norm")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def read_lines(path: str | Path) -> tuple[list[str], int]:
    """(the non-empty lines of a UTF-8 file in order, the number of empty ones)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start})") from None
    lines = text.splitlines()
    kept = [line for line in lines if line.strip()]
    return kept, len(lines) - len(kept)


def run(args: argparse.Namespace) -> int:
    from llm.checkpoint import load_model

    if not str(args.out).endswith(".npy"):
        refuse([(True, f"--out {args.out}: numpy.save writes a .npy file; name it *.npy")])
    with model_dir_errors(args.model):
        model = load_model(args.model)
    cfg = model.config.model
    max_len = args.max_len or cfg.max_seq_len
    refuse([
        (cfg.arch != "transformer", f"--model is a {cfg.arch!r} model: embed pools a Transformer"),
        (args.pooling == "cls" and cfg.causal,
         "--pooling cls: a causal model's first token sees only itself; use mean"),
        (max_len > cfg.max_seq_len,
         f"--max-len {max_len} exceeds the model's max_seq_len={cfg.max_seq_len}"),
    ])  # fmt: skip
    lines, empty = read_lines(args.input)
    if not lines:
        raise ValueError(f"{args.input}: no non-empty line to embed ({empty} empty lines)")
    emb, truncated = embed_lines(model, lines, args, max_len)
    import numpy as np

    np.save(args.out, emb)
    print(f"wrote {args.out}: {emb.shape[0]} embeddings of dim {emb.shape[1]} "
          f"({args.pooling} pooling{'' if args.no_normalize else ', L2-normalised'}) from "
          f"{len(lines)} non-empty lines; {empty} empty lines skipped; {truncated} lines cut "
          f"to {max_len} tokens", file=sys.stderr)  # fmt: skip
    return 0


def embed_lines(model, lines: list[str], args: argparse.Namespace, max_len: int):
    """(float32 [len(lines), D] embeddings, lines truncated) in batches of --batch lines."""
    import jax
    import numpy as np

    from llm.model.pooling import sentence_embeddings, tokenize_sentences

    cfg, B = model.config.model, args.batch
    fn = jax.jit(
        lambda p, t, m: sentence_embeddings(
            cfg, p, t, m, pooling=args.pooling, normalize=not args.no_normalize
        )
    )
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(lines), unit="line", file=sys.stderr)
    out, truncated = [], 0
    for start in range(0, len(lines), B):
        chunk = lines[start : start + B]
        tokens, mask, cut = tokenize_sentences(model.tokenizer, chunk, max_len)
        L = min(-(-tokens.shape[1] // LENGTH_BUCKET) * LENGTH_BUCKET, max_len)
        padded_t = np.zeros((B, L), np.int32)  # full batches: one compile per length bucket
        padded_m = np.zeros((B, L), np.int32)
        padded_t[: len(chunk), : tokens.shape[1]] = tokens
        padded_m[: len(chunk), : mask.shape[1]] = mask
        out.append(np.asarray(fn(model.params, padded_t, padded_m))[: len(chunk)])
        truncated += cut
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return np.concatenate(out).astype(np.float32), truncated

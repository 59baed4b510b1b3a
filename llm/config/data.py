"""The data config: corpus, cleaning, tokenizer and how text becomes batches."""

from __future__ import annotations

from typing import Literal

from llm.config.base import check, config_class

SourceFormat = Literal[
    "auto", "txt", "jsonl", "parquet", "hf", "chat", "classification", "preference", "prompts",
    "seq2seq",
]  # fmt: skip
Normalization = Literal["NFC", "NFKC", "none"]
EncodingErrors = Literal["strict", "replace"]
Objective = Literal["causal", "mlm", "span_corruption"]
Overlong = Literal["error", "skip"]
Order = Literal["shuffled", "streams"]
PACKED_FORMATS = ("auto", "txt", "jsonl", "parquet", "hf")  # formats packed into rows


@config_class
class DataConfig:
    """Where training text comes from and how it becomes token batches (see docs/data.md)."""

    corpus: str = "shakespeare"  # built-in name (shakespeare|milton) or a file, directory or glob
    format: SourceFormat = "auto"  # reader for `corpus`; auto by extension; chat = SFT JSONL;
    # classification = {"text", "label"} JSONL (llm/data/classification.py); preference =
    # chosen/rejected pairs or KTO's labelled completions (llm/data/preference.py); prompts =
    # RL prompts with optional answers (llm/data/prompts.py); seq2seq = {"source", "target"}
    # JSONL or a generated "task:<name>" (llm/data/seq2seq.py, seq2seq_tasks.py)
    text_field: str = "text"  # JSONL key / Parquet column / HF dataset column holding the text
    txt_separator: str | None = None  # .txt: line that separates documents; null = one per file
    hf_split: str = "train"  # split read from a Hugging Face dataset (format=hf)
    encoding_errors: EncodingErrors = "strict"  # invalid UTF-8: strict = error, replace = U+FFFD
    eval_corpus: str | None = "milton"  # out-of-domain corpus for perplexity (split "ood")
    cache_dir: str | None = (
        None  # downloads and token shards; null = $LLM_CACHE_DIR or ~/.cache/llm
    )
    tokenizer: str = "byte"  # "byte", a SentencePiece .model path, or a tokenizer.json path
    val_fraction: float = 0.05  # fraction of documents held out for validation (at least one)
    seed: int = 0  # seed of the document split, packing order and row shuffling
    normalize: Normalization = "NFC"  # Unicode normalization form applied to every document
    min_chars: int = 100  # quality filter: documents shorter than this (characters) are dropped
    max_symbol_ratio: float = (
        0.3  # quality filter: max fraction of non-alphanumeric, non-space chars
    )
    max_dup_line_ratio: float = 0.3  # quality filter: max fraction of chars in repeated long lines
    dedup_exact: bool = (
        True  # drop documents whose cleaned text is byte-identical to an earlier one
    )
    near_dup_threshold: float | None = 0.8  # MinHash Jaccard above which a doc is a near-duplicate
    minhash_perms: int = 128  # MinHash signature length (hash functions)
    minhash_bands: int = 16  # LSH bands; minhash_perms must be divisible by it
    shingle_words: int = 5  # words per shingle for MinHash
    add_bos: bool = True  # prepend the tokenizer's BOS id to every document
    add_eos: bool = True  # append the tokenizer's EOS id to every document
    # causal LM batches, BERT-style masked LM (80/10/10), or T5 span corruption (pair batches)
    objective: Objective = "causal"
    mlm_rate: float = 0.15  # fraction of tokens selected for masked-LM prediction
    span_density: float = 0.15  # span_corruption (T5): fraction of a row's tokens cut out
    span_mean_length: float = 3.0  # span_corruption: mean length of a cut-out span, in tokens
    sft_overlong: Overlong = "error"  # chat example longer than seq_len: error, or skip+count
    # train row order: shuffled = rows shuffled every epoch; streams = the packed rows cut into
    # train.batch_size contiguous streams, batch k row b = k-th row of stream b (Zaremba et al.
    # 2014), with a `continues` [B] leaf; what train.tbptt needs (llm/data/streams.py)
    order: Order = "shuffled"
    read_threads: int = 2  # grain threads that read and pack rows in the background
    prefetch: int = 8  # batches grain prepares ahead of the training step

    def __post_init__(self) -> None:
        check(bool(self.corpus.strip()), "corpus", "must not be empty")
        check(bool(self.text_field), "text_field", "must not be empty")
        check(self.txt_separator != "", "txt_separator", "must be null or a non-empty line")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        check(self.min_chars >= 0, "min_chars", "must be non-negative")
        check(0.0 < self.max_symbol_ratio <= 1.0, "max_symbol_ratio", "must be in (0, 1]")
        check(0.0 < self.max_dup_line_ratio <= 1.0, "max_dup_line_ratio", "must be in (0, 1]")
        check(
            self.near_dup_threshold is None or 0.0 < self.near_dup_threshold <= 1.0,
            "near_dup_threshold",
            "must be in (0, 1] or null",
        )
        check(self.minhash_perms > 0, "minhash_perms", "must be positive")
        check(
            self.minhash_bands > 0 and self.minhash_perms % self.minhash_bands == 0,
            "minhash_bands",
            f"minhash_perms={self.minhash_perms} is not divisible by {self.minhash_bands}",
        )
        check(self.shingle_words > 0, "shingle_words", "must be positive")
        check(
            self.format != "chat" or self.objective == "causal",
            "objective",
            "data.format=chat (SFT conversations) makes causal batches; use objective=causal",
        )
        check(
            self.format not in ("preference", "prompts") or self.objective == "causal",
            "objective",
            f"data.format={self.format} is for causal decoders; use objective=causal",
        )
        check(
            self.order == "shuffled"
            or (self.format in PACKED_FORMATS and self.objective == "causal"),
            "order",
            f"streams cuts packed causal-LM rows into streams; data.format={self.format} with "
            f"objective={self.objective} has no such rows (use order=shuffled)",
        )
        check(0.0 < self.mlm_rate < 1.0, "mlm_rate", "must be in (0, 1)")
        check(self.read_threads >= 0, "read_threads", "must be non-negative")
        check(self.prefetch >= 0, "prefetch", "must be non-negative")
        self._check_seq2seq()

    def _check_seq2seq(self) -> None:
        """Span corruption cuts packed text; seq2seq pairs are trained as given."""
        check(
            self.objective != "span_corruption" or self.format in PACKED_FORMATS,
            "objective",
            f"span_corruption corrupts packed text rows; data.format={self.format} has none",
        )
        check(
            self.format != "seq2seq" or self.objective == "causal",
            "objective",
            "data.format=seq2seq trains (source, target) pairs as given; use objective=causal",
        )
        check(0.0 < self.span_density < 1.0, "span_density", "must be in (0, 1)")
        check(self.span_mean_length >= 1.0, "span_mean_length", "must be >= 1 token")
        for key, default in (("span_density", 0.15), ("span_mean_length", 3.0)):
            check(
                self.objective == "span_corruption" or getattr(self, key) == default,
                key,
                f"is read only by objective=span_corruption; objective={self.objective} "
                "would ignore it",
            )

"""Perplexity and bits per byte of whole documents, per domain and overall.

Each document is scored whole with `Scorer.loglikelihood_rolling` (disjoint windows of the
model's context, the harness's rolling log-likelihood), giving ll_i in nats. Over a set of
documents (lm-evaluation-harness, `lm_eval/api/metrics.py`: `weighted_perplexity` and
`bits_per_byte` over (ll_i, count_i) pairs; Gao et al. 2020, "The Pile", sec. 4, for BPB):

    word_perplexity  = exp(-sum ll_i / sum words_i)    words_i = len(re.split(r"\\s+", text_i))
    byte_perplexity  = exp(-sum ll_i / sum bytes_i)    bytes_i = len(text_i.encode("utf-8"))
    bits_per_byte    = -sum ll_i / sum bytes_i / ln 2
    token_perplexity = exp(-sum ll_i / sum tokens_i)   (depends on the tokenizer: compare models
                                                        of one tokenizer only)

`words_i` is the harness's `count_words`, which counts an empty string before leading
whitespace as a word. These are ratios of sums, not means of per-document values, so their
95% intervals resample documents and recompute the ratio (a percentile bootstrap of a ratio
estimator; Efron & Tibshirani 1993, ch. 13); word and byte perplexity are monotone functions
of their ratio, so their intervals are the transformed ratio intervals.

Documents come from a JSONL file ({"text", "domain"?, "id"?} per line; every document is
scored) or from a corpus name or path read as training data is (`llm.data.prepare_documents`:
cleaning, filters, dedup), of which the validation split of the model's data config is scored.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm.data import prepare_documents, split_documents
from llm.data.sources import SourceError, jsonl_records

LN2 = math.log(2)


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document to score."""

    id: str  # the record's "id", else where it came from ("file:line")
    text: str
    domain: str | None


@dataclasses.dataclass(frozen=True)
class DocScores:
    """Per-document counts and log-likelihoods, aligned with the documents."""

    logprob: np.ndarray  # [N] rolling log-likelihood, nats
    tokens: np.ndarray  # [N] tokens predicted
    words: np.ndarray  # [N] harness word count
    bytes: np.ndarray  # [N] UTF-8 bytes


def count_words(text: str) -> int:
    """Words as the harness counts them for word perplexity (module docstring)."""
    return len(re.split(r"\s+", text))


def read_docs(path: str) -> list[Doc]:
    """Documents of a PPL task JSONL; a bad record raises SourceError naming file:line."""
    docs = []
    for record, where in jsonl_records(path, "perplexity"):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SourceError(f"{where}: expected an object with a string 'text'")
        if not record["text"]:
            raise SourceError(f"{where}: 'text' is empty: nothing to score")
        domain, doc_id = record.get("domain"), record.get("id", where)
        if domain is not None and not isinstance(domain, str):
            raise SourceError(f"{where}: 'domain' is {type(domain).__name__}, not a string")
        if not isinstance(doc_id, str):
            raise SourceError(f"{where}: 'id' is {type(doc_id).__name__}, not a string")
        docs.append(Doc(doc_id, record["text"], domain))
    return docs


def corpus_docs(data_cfg: Any, spec: str) -> list[Doc]:
    """The validation documents of corpus `spec` under the data config `data_cfg` (the split
    training uses: same cleaning, dedup, val_fraction and seed), with no domain."""
    docs, _ = prepare_documents(data_cfg, spec)
    val = split_documents(docs, data_cfg.val_fraction, data_cfg.seed)["validation"]
    if not val:
        raise ValueError(f"{spec}: no validation documents (data.val_fraction is 0?)")
    return [Doc(d.origin, d.text, None) for d in val]


def score_docs(scorer: Any, docs: Sequence[Doc], *, progress: bool = False) -> DocScores:
    """Rolling log-likelihood and the counts of every document."""
    scored = scorer.loglikelihood_rolling([d.text for d in docs], progress=progress)
    return DocScores(
        logprob=np.array([s.logprob for s in scored], np.float64),
        tokens=np.array([s.n_tokens for s in scored], np.float64),
        words=np.array([count_words(d.text) for d in docs], np.float64),
        bytes=np.array([len(d.text.encode("utf-8")) for d in docs], np.float64),
    )


def metrics(s: DocScores, index: np.ndarray | None = None) -> dict[str, float]:
    """The four figures of the module docstring over the documents in `index` (default all)."""
    index = np.arange(s.logprob.size) if index is None else index
    nll = -s.logprob[index].sum()
    return {
        "word_perplexity": _exp(nll / s.words[index].sum()),
        "byte_perplexity": _exp(nll / s.bytes[index].sum()),
        "bits_per_byte": nll / s.bytes[index].sum() / LN2,
        "token_perplexity": _exp(nll / s.tokens[index].sum()),
    }


def intervals(
    s: DocScores, *, level: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the ratio metrics (documents resampled)."""
    rng = np.random.default_rng(seed)
    idx_RN = rng.integers(0, s.logprob.size, size=(n_resamples, s.logprob.size))
    nll_R = -s.logprob[idx_RN].sum(axis=1)
    out = {}
    for name, counts, transform in (
        ("word_perplexity", s.words, _exp),
        ("byte_perplexity", s.bytes, _exp),
        ("bits_per_byte", s.bytes, lambda r: r / LN2),
        ("token_perplexity", s.tokens, _exp),
    ):
        ratio_R = nll_R / counts[idx_RN].sum(axis=1)
        lo, hi = np.quantile(ratio_R, [(1 - level) / 2, (1 + level) / 2])
        out[name] = (transform(float(lo)), transform(float(hi)))
    return out


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))  # finite: results JSON has no inf

"""Count-based n-gram LMs: exact counts, distributions that sum to one, held-out quality, and
bits per byte counted exactly as training's evaluation counts it."""

from __future__ import annotations

import collections
import importlib
import math

import numpy as np
import pytest

from llm.baselines.heldout import heldout_metrics, split_documents
from llm.baselines.ngram import METHODS, AddK, KneserNey, fit_ngram
from llm.baselines.ngram_counts import Documents, count_ngrams, lookup
from llm.config import load_config
from llm.data import make_batches
from llm.tokenizers import ByteTokenizer

# the module (llm.train re-exports a function of the same name, which `import ... as` finds)
train_evaluate = importlib.import_module("llm.train.evaluate")
BOS, EOS, V = 5, 6, 8  # ids 0..4 are "text", 7 never occurs (like PAD)


def random_docs(n_docs: int, seed: int, max_len: int = 30) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[BOS, *rng.integers(0, 5, int(rng.integers(1, max_len))), EOS] for _ in range(n_docs)]


def brute_counts(docs: list[list[int]], k: int) -> collections.Counter:
    return collections.Counter(tuple(d[i : i + k]) for d in docs for i in range(len(d) - k + 1))


def table_as_counter(counts, k: int) -> dict[tuple, int]:
    """Decodes the hierarchical ids of order k back into token tuples."""

    def tokens(order: int, i: int) -> tuple:
        t = counts.tables[order - 1]
        return (
            (*tokens(order - 1, t.context[i]), int(t.word[i])) if order > 1 else (int(t.word[i]),)
        )

    t = counts.tables[k - 1]
    return {tokens(k, i): int(t.count[i]) for i in range(len(t))}


def test_counts_equal_brute_force_and_never_cross_documents():
    docs = random_docs(25, 0)
    counts = count_ngrams(Documents.from_list(docs), 4, V, bos_id=BOS)
    for k in range(1, 5):
        assert table_as_counter(counts, k) == dict(brute_counts(docs, k))
    joined = brute_counts(
        [[t for d in docs for t in d]], 3
    )  # counting across documents would add these
    assert set(joined) - set(brute_counts(docs, 3))
    for k in range(1, 4):  # continuation counts: distinct left neighbours N1+(. g)
        grams = table_as_counter(counts, k)
        left = collections.Counter(g[1:] for g in brute_counts(docs, k + 1))
        assert dict(zip(grams, counts.continuation(k).tolist(), strict=True)) == {
            g: left[g] for g in grams
        }
    t3 = counts.tables[2]
    starts = [g for g in table_as_counter(counts, 3) if g[0] == BOS]
    assert int(t3.bos_initial.sum()) == len(starts) > 0


def test_lookup_finds_exactly_the_counted_ngrams():
    train, test = random_docs(20, 1), random_docs(10, 2, max_len=60)
    counts = count_ngrams(Documents.from_list(train), 4, V, bos_id=BOS)
    docs = Documents.from_list(test)
    found = lookup(counts, docs)
    seen = {k: brute_counts(train, k) for k in range(1, 5)}
    pos = docs.position_in_doc()
    for p in range(len(docs)):
        for k in range(1, 5):
            gram = tuple(docs.tokens[p - k + 1 : p + 1]) if pos[p] >= k - 1 else None
            assert (found.gram[k - 1][p] >= 0) == (gram in seen[k])


CONTEXTS = [
    [],  # the unigram level
    [BOS],  # a document start
    [BOS, 0, 1, 2],  # seen (every short sequence of 5 symbols occurs in training)
    [0, 1, 2, 3, 4, 0],  # longer than any order's context: only the end matters
    [EOS, EOS, EOS, EOS],  # never seen: EOS ends documents
    [7, 7],  # a token never seen at all
    [3, BOS, 4, 4],  # BOS in the middle: an unseen context
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_probabilities_sum_to_one(method, order):
    lm = fit_ngram(random_docs(40, 3), order, method, V, bos_id=BOS, k=0.3)
    for context in CONTEXTS:
        probs = lm.next_token_probs(context)
        assert probs.shape == (V,) and np.all(probs > 0)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12), context
    doc = [BOS, 0, 1, 1, 4]
    assert lm.prob(doc[:-1], doc[-1]) == pytest.approx(math.exp(lm.logprobs([doc])[-1]), rel=1e-12)


def markov_docs(n_docs: int, seed: int) -> list[list[int]]:
    """Text from a sparse second-order Markov chain over 30 symbols: smoothing matters."""
    rng = np.random.default_rng(1234)  # the same chain for every seed
    table = rng.dirichlet(np.full(30, 0.05), size=(30, 30))
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        doc = list(rng.integers(0, 30, 2))
        for _ in range(int(rng.integers(20, 200))):
            doc.append(int(rng.choice(30, p=table[doc[-2], doc[-1]])))
        docs.append([30, *doc, 31])  # BOS = 30, EOS = 31
    return docs


def test_modified_kneser_ney_beats_add_k_on_held_out_text():
    train, test = markov_docs(150, 0), markov_docs(30, 1)
    ppl = {
        name: fit_ngram(train, 3, method, 33, bos_id=30, k=k).perplexity(test)
        for name, method, k in [("mkn", "mkn", 1), ("add1", "addk", 1.0), ("add.01", "addk", 0.01)]
    }
    assert ppl["mkn"] < ppl["add.01"] < ppl["add1"]


def test_kneser_ney_uses_raw_counts_after_bos():
    """The bigram "BOS 0" of a KN-3 model cannot be a backoff of a longer n-gram, so its
    counts are raw (KenLM): p(0 | BOS) follows the 5 of 6 documents that start with 0. With
    continuation counts (all zero after BOS) the context would be unseen and p(0 | BOS) fall
    back to the unigram level, where 0's continuation count is low."""
    docs = [[BOS, 0, 1, EOS]] * 5 + [[BOS, 2, 2, 0, 2, EOS]]
    counts = count_ngrams(Documents.from_list(docs), 3, V, bos_id=BOS)
    lm, plain = KneserNey(counts), KneserNey(count_ngrams(Documents.from_list(docs), 3, V, None))
    assert lm.prob([BOS], 0) > 0.7 > 0.3 > plain.prob([BOS], 0) == plain.prob([], 0)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """A corpus of text files with multi-byte characters; config, tokenizer and shards."""
    folder = tmp_path_factory.mktemp("ngram_corpus")
    rng = np.random.default_rng(0)
    words = ["thou", "art", "ſo", "fair", "ünd", "ça", "→", "the", "king", "qu'un"]
    for i in range(12):
        lines = [" ".join(rng.choice(words, 10)) for _ in range(int(rng.integers(3, 20)))]
        (folder / f"play{i:02d}.txt").write_text("\n".join(lines) + "\n")
    cache = tmp_path_factory.mktemp("ngram_cache")
    overrides = [f"data.corpus={folder}", f"data.cache_dir={cache}",
                 "data.eval_corpus=null", "data.min_chars=1", "data.val_fraction=0.3",
                 "train.batch_size=4", "train.seq_len=24"]  # fmt: skip
    cfg = load_config(None, overrides)
    tok = ByteTokenizer()
    return cfg, tok, split_documents(cfg.data, tok)


@pytest.mark.parametrize("max_batches", [None, 1])
def test_bits_per_byte_equal_training_evaluation(tiny_split, monkeypatch, max_batches):
    """A bigram model's nats depend only on (input, target) pairs, so `evaluate` (its batch
    loop, token mask and byte counting) can score it: our held-out metrics must agree."""
    cfg, tok, shards = tiny_split
    lm = AddK(count_ngrams(Documents.from_shard(shards["train"]), 2, tok.vocab_size, tok.bos_id))
    table = np.log(np.stack([lm.next_token_probs([c]) for c in range(tok.vocab_size)]))

    def bigram_sums(model_cfg, params, batch, extras):
        x, y, m = (np.asarray(batch[k]) for k in ("inputs", "targets", "loss_mask"))
        return -float(np.sum(table[x, y] * m))

    monkeypatch.setattr(train_evaluate, "_eval_sums", bigram_sums)
    batches = make_batches(cfg, "validation", tok)
    want = train_evaluate.evaluate(None, None, batches, tok, max_batches=max_batches)
    val = shards["validation"]
    got = heldout_metrics(lm.logprobs(Documents.from_shard(val)), val, tok,
                          cfg.train.seq_len, cfg.train.batch_size, max_batches)  # fmt: skip
    assert got["tokens"] == want["tokens"] and got["bytes"] == want["bytes"]
    assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-9)
    if max_batches is None:
        assert got["tokens"] == val.num_tokens - val.num_docs  # every token but each BOS
        assert got["bytes"] > got["tokens"] - val.num_docs  # multi-byte characters count

"""Word vectors of the KJV + Shakespeare: ours (skip-gram, CBOW, GloVe) against gensim's word2vec.

python bench/word_vectors.py [--epochs 5] [--glove-epochs 10] [--dim 100] [--out DIR]

For each method: train time, 3CosAdd accuracy on our analogy set (llm/embeddings/eval_sets.py),
Spearman correlation with gensim's skip-gram over the cosines of every pair of the analogy
set's words present in both vocabularies, and the paraphrase AUC of mean-vector cosine, -WMD
and -RWMD; TF-IDF cosine (no vectors) is the lexical peer. gensim's skip-gram and CBOW are
trained in the same run with the same window, negatives, min_count, sample and epochs, on 2
worker threads (its Hogwild SGD), and score on the same sets: the peer is measured, not quoted.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import scipy.stats
from gensim.models import Word2Vec

from llm.embeddings import similarity
from llm.embeddings.corpus import corpus_texts, tokenize
from llm.embeddings.eval_sets import ANALOGY_PAIRS, analogy_accuracy, paraphrase_auc
from llm.embeddings.glove import GloVeConfig, train_glove
from llm.embeddings.tfidf import Tfidf, tfidf_cosine
from llm.embeddings.vectors import WordVectors
from llm.embeddings.word2vec import Word2VecConfig, train_word2vec


def gensim_vectors(sentences, method: str, cfg: Word2VecConfig) -> WordVectors:
    start = time.perf_counter()
    model = Word2Vec(sentences, vector_size=cfg.dim, window=cfg.window, min_count=cfg.min_count,
                     sg=int(method == "sgns"), negative=cfg.negatives, sample=cfg.sample,
                     epochs=cfg.epochs, workers=2, seed=cfg.seed)  # fmt: skip
    seconds = time.perf_counter() - start
    words = tuple(model.wv.index_to_key)
    counts = np.array([model.wv.get_vecattr(w, "count") for w in words], np.int64)
    return WordVectors(words, model.wv.vectors.copy(), counts, {"train_seconds": seconds})


def pair_cosines(wv: WordVectors, pairs) -> np.ndarray:
    unit, index = wv.unit(), wv.index
    return np.array([unit[index[a]] @ unit[index[b]] for a, b in pairs])


def scores(wv: WordVectors, ref: WordVectors, pairs) -> dict[str, float]:
    return {
        "seconds": wv.meta["train_seconds"],
        "analogy": analogy_accuracy(wv)["all"],
        "spearman": scipy.stats.spearmanr(pair_cosines(wv, pairs), pair_cosines(ref, pairs))[0],
        "auc_cos": paraphrase_auc(lambda a, b: similarity.sentence_cosine(wv, a, b)),
        "auc_wmd": paraphrase_auc(lambda a, b: -similarity.wmd(wv, a, b)),
        "auc_rwmd": paraphrase_auc(lambda a, b: -similarity.rwmd(wv, a, b)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="word2vec epochs (ours, gensim)")
    parser.add_argument("--glove-epochs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--out", default=None, help="also save our vectors under DIR/<method>")
    args = parser.parse_args()
    texts = corpus_texts()
    sentences = [tokenize(t) for t in texts]
    print(f"{len(texts)} sentences, {sum(map(len, sentences))} words")
    w2v = {m: Word2VecConfig(method=m, dim=args.dim, epochs=args.epochs) for m in ("sgns", "cbow")}
    trained = {f"gensim {m}": gensim_vectors(sentences, m, cfg) for m, cfg in w2v.items()}
    for method, cfg in w2v.items():
        trained[f"ours {method}"] = train_word2vec(sentences, cfg)
    glove = GloVeConfig(dim=args.dim, epochs=args.glove_epochs)
    trained["ours glove"] = train_glove(sentences, glove)
    if args.out:
        for name, wv in trained.items():
            if name.startswith("ours"):
                wv.save(Path(args.out) / name.split()[1])
    ref = trained["gensim sgns"]
    words = sorted({w for pairs in ANALOGY_PAIRS.values() for p in pairs for w in p})
    words = [w for w in words if all(w in wv.index for wv in trained.values())]
    pairs = list(itertools.combinations(words, 2))
    print(f"Spearman over {len(pairs)} pairs of {len(words)} words, against gensim sgns")
    print("| method | train s | analogy acc | Spearman | AUC cos | AUC -WMD | AUC -RWMD |")
    print("|---|---|---|---|---|---|---|")
    for name, wv in trained.items():
        s = scores(wv, ref, pairs)
        print(f"| {name} | {s['seconds']:.0f} | {s['analogy']:.1%} | {s['spearman']:.3f} | "
              f"{s['auc_cos']:.3f} | {s['auc_wmd']:.3f} | {s['auc_rwmd']:.3f} |")  # fmt: skip
    model = Tfidf.fit(texts)
    tfidf_auc = paraphrase_auc(lambda a, b: tfidf_cosine(model, a, b))
    print(f"| TF-IDF cosine | - | - | - | {tfidf_auc:.3f} | - | - |")


if __name__ == "__main__":
    main()

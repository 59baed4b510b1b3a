"""`llm wordvec`: word vectors (word2vec, GloVe) of the KJV + Shakespeare, and their checks.

llm wordvec train --method sgns|cbow|glove --out DIR [--corpus kjv,shakespeare | --text FILE]
                  [--dim 100] [--window W] [--epochs E] [--min-count 5] [--negatives 5]
                  [--sample 1e-3] [--batch N] [--lr LR] [--seed 0]
llm wordvec neighbors DIR WORD [-k 10]
llm wordvec analogy DIR          3CosAdd accuracy on our analogy set (llm/embeddings/eval_sets.py)
llm wordvec similarity DIR       paraphrase AUC of mean-vector cosine, -WMD and TF-IDF cosine

DIR holds vectors.npy, vocab.txt and meta.json (llm/embeddings/vectors.py). Unset options take
the method's config defaults (Word2VecConfig, GloVeConfig); options a method does not read are
refused. The TF-IDF of `similarity` is fitted on the sentences the vectors were trained on.
"""

from __future__ import annotations

import argparse

from llm.cli_args import finite_float, int_at_least, refuse

METHODS = ("sgns", "cbow", "glove")
W2V_ONLY = ("negatives", "sample")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("wordvec", help="word2vec / GloVe vectors and their checks")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train word vectors on the KJV + Shakespeare")
    add = train.add_argument
    add(
        "--method",
        choices=METHODS,
        required=True,
        help="skip-gram, CBOW (negative sampling), GloVe",
    )
    add("--out", required=True, metavar="DIR", help="directory to write the vectors to")
    add("--corpus", default=None, help="built-in corpora, comma-separated (kjv,shakespeare)")
    add(
        "--text",
        default=None,
        metavar="FILE",
        help="train on this file instead (a line a sentence)",
    )
    for name in ("dim", "window", "epochs", "min-count", "negatives", "batch", "seed"):
        add(f"--{name}", type=int_at_least(0 if name == "seed" else 1), default=None)
    add("--sample", type=finite_float, default=None, help="subsampling threshold t (word2vec)")
    add("--lr", type=finite_float, default=None, help="starting learning rate")
    train.set_defaults(func=run_train)
    neighbors = sub.add_parser("neighbors", help="nearest words by cosine")
    neighbors.add_argument("dir", metavar="DIR")
    neighbors.add_argument("word", metavar="WORD")
    neighbors.add_argument("-k", type=int_at_least(1), default=10, help="how many")
    neighbors.set_defaults(func=run_neighbors)
    analogy = sub.add_parser("analogy", help="3CosAdd accuracy on our analogy set")
    analogy.add_argument("dir", metavar="DIR")
    analogy.set_defaults(func=run_analogy)
    similarity = sub.add_parser("similarity", help="paraphrase AUC: cosine vs WMD vs TF-IDF")
    similarity.add_argument("dir", metavar="DIR")
    similarity.set_defaults(func=run_similarity)


def config_of(args: argparse.Namespace):
    """The Word2VecConfig / GloVeConfig the options ask for (unset options keep defaults)."""
    from llm.embeddings.glove import GloVeConfig
    from llm.embeddings.word2vec import Word2VecConfig

    names = ("dim", "window", "epochs", "min_count", "negatives", "batch", "seed", "sample", "lr")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.method == "glove":
        refuse(
            [(n in given, f"--{n} is a word2vec option; GloVe does not read it") for n in W2V_ONLY]
        )
        return GloVeConfig(**given)
    return Word2VecConfig(method=args.method, **given)


def load_sentences(corpus: str | None, text: str | None) -> tuple[list[str], dict]:
    """(raw sentences, a record of where they came from) for training and TF-IDF."""
    from llm.embeddings.corpus import corpus_texts, read_text_file

    if text is not None:
        return read_text_file(text), {"text": str(text)}
    names = [n.strip() for n in (corpus or "kjv,shakespeare").split(",") if n.strip()]
    return corpus_texts(names), {"corpus": names}


def run_train(args: argparse.Namespace) -> int:
    from llm.embeddings.corpus import tokenize
    from llm.embeddings.glove import train_glove
    from llm.embeddings.word2vec import train_word2vec

    refuse(
        [(args.text is not None and args.corpus is not None, "give --corpus or --text, not both")]
    )
    cfg = config_of(args)
    texts, source = load_sentences(args.corpus, args.text)
    sentences = [tokenize(t) for t in texts]
    train = train_glove if args.method == "glove" else train_word2vec
    wv = train(sentences, cfg)
    wv = type(wv)(wv.words, wv.vectors_VD, wv.counts, {**wv.meta, "source": source})
    wv.save(args.out)
    print(f"wrote {args.out}: {len(wv)} words x {wv.vectors_VD.shape[1]}, "
          f"{wv.meta['train_seconds']:.1f} s, final loss {wv.meta['final_loss']:.4f}")  # fmt: skip
    dropped = wv.meta["dropped_per_epoch"]  # the last partial chunk of each epoch (meta.json)
    print(f"examples dropped per epoch (partial last chunk): {dropped}")
    return 0


def _load(directory: str):
    from llm.embeddings.vectors import WordVectors

    return WordVectors.load(directory)


def run_neighbors(args: argparse.Namespace) -> int:
    from llm.embeddings.similarity import nearest

    wv = _load(args.dir)
    try:
        found = nearest(wv, args.word.lower(), args.k)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    for word, sim in found:
        print(f"{sim:.4f}  {word}")
    return 0


def run_analogy(args: argparse.Namespace) -> int:
    from llm.embeddings.eval_sets import analogy_accuracy, analogy_items

    wv = _load(args.dir)
    scores = analogy_accuracy(wv)
    missing = sorted({w for _, *words in analogy_items() for w in words} - set(wv.index))
    if missing:  # their questions count as wrong (analogy_accuracy)
        print(f"{len(missing)} words of the set are not in {args.dir}: {' '.join(missing)}")
    counts = {}
    for relation, *_ in analogy_items():
        counts[relation] = counts.get(relation, 0) + 1
    counts["all"] = sum(counts.values())
    for relation, acc in scores.items():
        print(f"{relation:8s} {acc:6.1%}  ({counts[relation]} questions)")
    return 0


def similarity_scores(wv, texts: list[str]) -> dict[str, float]:
    """Paraphrase AUC of each score: mean-vector cosine, -WMD, -RWMD, TF-IDF cosine."""
    from llm.embeddings import similarity
    from llm.embeddings.eval_sets import paraphrase_auc
    from llm.embeddings.tfidf import Tfidf, tfidf_cosine

    model = Tfidf.fit(texts)
    return {
        "mean-vector cosine": paraphrase_auc(lambda a, b: similarity.sentence_cosine(wv, a, b)),
        "-WMD": paraphrase_auc(lambda a, b: -similarity.wmd(wv, a, b)),
        "-RWMD": paraphrase_auc(lambda a, b: -similarity.rwmd(wv, a, b)),
        "TF-IDF cosine": paraphrase_auc(lambda a, b: tfidf_cosine(model, a, b)),
    }


def run_similarity(args: argparse.Namespace) -> int:
    wv = _load(args.dir)
    source = wv.meta.get("source", {"corpus": ["kjv", "shakespeare"]})
    texts, _ = load_sentences(",".join(source.get("corpus", [])), source.get("text"))
    for name, value in similarity_scores(wv, texts).items():
        print(f"{name:20s} AUC {value:.3f}")
    return 0

"""TF-IDF equals scikit-learn's TfidfVectorizer on the same tokens, to 1e-12, for every option."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from llm.embeddings.corpus import tokenize
from llm.embeddings.eval_sets import PARAPHRASES
from llm.embeddings.tfidf import Tfidf, TfidfConfig, tfidf_cosine

DOCS = [a for a, _, _ in PARAPHRASES] + [b for _, b, _ in PARAPHRASES]
UNSEEN = ["The king is dead, long live the king!", "zzz unknown words only", ""]


@pytest.mark.parametrize(
    "smooth_idf,sublinear_tf,norm",
    list(itertools.product([True, False], [True, False], ["l2", None])),
)
def test_equals_scikit_learn(smooth_idf, sublinear_tf, norm):
    cfg = TfidfConfig(smooth_idf=smooth_idf, sublinear_tf=sublinear_tf, norm=norm)
    ours = Tfidf.fit(DOCS, cfg)
    ref = TfidfVectorizer(analyzer=tokenize, smooth_idf=smooth_idf, sublinear_tf=sublinear_tf,
                          norm=norm).fit(DOCS)  # fmt: skip
    assert list(ours.terms) == list(ref.get_feature_names_out())
    np.testing.assert_allclose(ours.idf_T, ref.idf_, rtol=0, atol=1e-12)
    for docs in (DOCS, UNSEEN):
        got, want = ours.transform(docs).toarray(), ref.transform(docs).toarray()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_cosine_of_rows():
    model = Tfidf.fit(DOCS)
    rows = model.transform(DOCS[:2]).toarray()
    expected = rows[0] @ rows[1] / (np.linalg.norm(rows[0]) * np.linalg.norm(rows[1]))
    assert tfidf_cosine(model, DOCS[0], DOCS[1]) == pytest.approx(expected, abs=1e-12)
    assert tfidf_cosine(model, DOCS[0], DOCS[0]) == pytest.approx(1.0)
    assert tfidf_cosine(model, DOCS[0], "zzz") == 0.0


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="norm"):
        TfidfConfig(norm="l1")
    with pytest.raises(ValueError, match="no term"):
        Tfidf.fit(["123 !!", ""])

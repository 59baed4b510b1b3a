"""Our own evaluation sets for word vectors of the KJV + Shakespeare, and their scores.

Written for this project (no public set is copied); every word occurs at least 5 times in the
two corpora (`llm wordvec analogy` names any that a vector file lacks).
* `ANALOGY_PAIRS`: word pairs in four relations of this English (gender, plural, past tense,
  the -eth third person). `analogy_items` turns a relation's n pairs into 2n questions
  a:b::c:d, pairing pair i with pairs i+1 and i+3 (mod n): 56 questions in all, scored by
  3CosAdd accuracy (similarity.analogy), the measure of Mikolov et al. 2013a.
* `PARAPHRASES`: 30 sentence pairs in the corpora's register, 15 paraphrases (label 1) and 15
  pairs that share words but not meaning (label 0). A similarity score is judged by its ROC
  AUC: the probability that a random paraphrase pair scores above a random other pair (the
  Mann-Whitney statistic, ties counting one half).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llm.embeddings.similarity import analogy
from llm.embeddings.vectors import WordVectors

ANALOGY_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "gender": (("king", "queen"), ("man", "woman"), ("father", "mother"), ("son", "daughter"),
               ("brother", "sister"), ("husband", "wife"), ("lord", "lady"),
               ("prince", "princess")),
    "plural": (("king", "kings"), ("son", "sons"), ("hand", "hands"), ("eye", "eyes"),
               ("sword", "swords"), ("city", "cities"), ("friend", "friends"),
               ("enemy", "enemies")),
    "past": (("go", "went"), ("come", "came"), ("see", "saw"), ("speak", "spake"),
             ("give", "gave"), ("take", "took")),
    "eth": (("say", "saith"), ("go", "goeth"), ("come", "cometh"), ("give", "giveth"),
            ("know", "knoweth"), ("love", "loveth")),
}  # fmt: skip

PARAPHRASES: tuple[tuple[str, str, int], ...] = (
    ("The king is dead.", "Our sovereign lord hath died.", 1),
    ("I love thee with all my heart.", "My whole heart is full of love for thee.", 1),
    ("He drew his sword and smote the man.", "With his sword he struck the man down.", 1),
    ("Give me bread, for I am hungry.", "I hunger; give me bread to eat.", 1),
    ("The city was burned with fire.", "Fire consumed the city.", 1),
    ("Go thy way in peace.", "Depart in peace.", 1),
    ("She wept for her son.", "The mother mourned and cried for her child.", 1),
    ("The night is dark and cold.", "It is a cold and dark night.", 1),
    ("Speak, for thy servant heareth.", "Say on; thy servant listens.", 1),
    ("They fled into the wilderness.", "Into the desert they ran away.", 1),
    ("I will not forget thee.", "Thou shalt be remembered by me.", 1),
    ("The queen is angry with her lord.", "Her husband hath made the queen wroth.", 1),
    ("Let us drink wine and be merry.", "Come, we will drink and make merry with wine.", 1),
    ("The Lord is my shepherd.", "God keepeth me as a shepherd his sheep.", 1),
    ("He is an honest man.", "There is no falsehood in him; he is true.", 1),
    ("The king is dead.", "The king is merry at his feast.", 0),
    ("I love thee with all my heart.", "I hate thee with all my soul.", 0),
    ("He drew his sword and smote the man.", "He drew water from the well.", 0),
    ("Give me bread, for I am hungry.", "Give me thy hand, good friend.", 0),
    ("The city was burned with fire.", "The city was full of merchants.", 0),
    ("Go thy way in peace.", "Go to war against thine enemies.", 0),
    ("She wept for her son.", "Her son laughed at the fool.", 0),
    ("The night is dark and cold.", "The day is bright and warm.", 0),
    ("Speak, for thy servant heareth.", "Thy servant hath eaten the lamb.", 0),
    ("They fled into the wilderness.", "They built a house in the city.", 0),
    ("I will not forget thee.", "I will not eat with thee.", 0),
    ("The queen is angry with her lord.", "The queen sings to her lord.", 0),
    ("Let us drink wine and be merry.", "Let us pray and fast.", 0),
    ("The Lord is my shepherd.", "The shepherd lost his sheep in the field.", 0),
    ("He is an honest man.", "He is a false and wicked man.", 0),
)


def analogy_items() -> list[tuple[str, str, str, str, str]]:
    """(relation, a, b, c, d) questions a:b::c:d from `ANALOGY_PAIRS`."""
    items = []
    for relation, pairs in ANALOGY_PAIRS.items():
        n = len(pairs)
        for i, (a, b) in enumerate(pairs):
            for step in (1, 3):
                c, d = pairs[(i + step) % n]
                items.append((relation, a, b, c, d))
    return items


def analogy_accuracy(wv: WordVectors) -> dict[str, float]:
    """3CosAdd accuracy per relation and overall ("all"); a question with a word missing from
    the vocabulary counts as wrong (so vocabularies are compared on the same questions)."""
    unit_VD, index = wv.unit(), wv.index
    right: dict[str, list[bool]] = {}
    for relation, a, b, c, d in analogy_items():
        known = all(w in index for w in (a, b, c, d))
        ok = known and analogy(wv, a, b, c, unit_VD) == d
        right.setdefault(relation, []).append(ok)
    scores = {r: float(np.mean(v)) for r, v in right.items()}
    scores["all"] = float(np.mean([x for v in right.values() for x in v]))
    return scores


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC of `scores` for binary `labels` (Mann-Whitney, ties count 1/2)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError(f"AUC needs both labels; got {len(pos)} positive, {len(neg)} negative")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def paraphrase_auc(score: Callable[[str, str], float]) -> float:
    """AUC of a similarity `score(a, b)` (higher = more alike) on `PARAPHRASES`."""
    return auc([score(a, b) for a, b, _ in PARAPHRASES], [y for _, _, y in PARAPHRASES])

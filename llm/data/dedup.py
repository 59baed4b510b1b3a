"""Exact and near-duplicate document removal (MinHash with locality-sensitive hashing).

Exact duplicates: documents whose cleaned text has the same BLAKE2b digest; the first is kept.

Near duplicates (Broder 1997, "On the resemblance and containment of documents"): a document is
the set of its word `k`-shingles; the Jaccard similarity of two sets equals the probability that
a random hash function attains its minimum on both at the same shingle. A signature of `P`
such minima (one per salted 64-bit mixing hash) estimates Jaccard by the fraction of agreeing
positions. LSH (Indyk & Motwani 1998; Leskovec et al., "Mining of Massive
Datasets", ch. 3) splits the signature into `bands` bands of `r = P / bands` rows: two documents
become candidates when all rows of at least one band agree, which happens with probability
1 - (1 - J^r)^bands, an S-curve around J = (1 / bands)^(1 / r). Candidates are confirmed with
the signature estimate against `threshold`, clustered with union-find, and each cluster keeps
its earliest document.

Written with numpy rather than `datasketch` so the whole algorithm is readable in one screen;
`near_duplicates_reference` (all pairs, exact Jaccard) is the plain reference the tests use.
Signatures stream a document's shingles in batches with a running minimum, so memory stays
bounded by one batch (about 64k characters of text) even for a document of one huge line.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

_WORD_RE = re.compile(r"\w+")
# ASCII characters that are not word characters, not cased and not case-ignorable: safe cuts
_CUT_RE = re.compile(r"[\s!\"#$%&()*+,\-/;<=>?@\[\\\]{|}~]")
CHUNK_CHARS = 1 << 16  # characters per piece of a long document (about 10k shingles)


def exact_duplicates(texts: list[str]) -> list[int]:
    """Indices of documents whose text equals an earlier document's."""
    seen: set[bytes] = set()
    dups = []
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            dups.append(i)
        seen.add(digest)
    return dups


def shingles(text: str, k: int) -> set[str]:
    """Lower-cased word k-grams (the whole text as one shingle when shorter than k words)."""
    words = _WORD_RE.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def shingle_batches(text: str, k: int, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    """`shingles(text, k)` (with repeats) in batches from pieces of about `chunk_chars`, so a
    document of one huge line never has all its words, shingles or hashes in memory at once.

    Pieces are cut before a `_CUT_RE` character: it is never part of a word, and `str.lower`'s
    one context rule (a final sigma) stops at it, so lowering and splitting each piece gives
    the words of the whole text; the last k - 1 words carry over into the next piece."""
    carry: list[str] = []
    emitted = False
    for piece in _pieces(text, chunk_chars):
        words = carry + _WORD_RE.findall(piece.lower())
        if len(words) >= k:
            yield [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]
            emitted = True
        carry = words[max(len(words) - k + 1, 0) :]
    if not emitted:  # fewer than k words in all: the whole text is one shingle
        yield [" ".join(carry)]


def _pieces(text: str, size: int) -> Iterator[str]:
    start = 0
    while len(text) - start > size:
        cut = _CUT_RE.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


def _hash64(items: set[str]) -> np.ndarray:
    """Stable 64-bit hashes (Python's hash() is salted per process, so unusable here)."""
    digests = b"".join(hashlib.blake2b(s.encode(), digest_size=8).digest() for s in items)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele et al. 2014): a bijection of uint64 that scatters every
    input bit over the output. numpy uint64 products wrap modulo 2^64, as the algorithm wants."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def minhash_signature(text: str, k: int, perms: int, seed: int = 0) -> np.ndarray:
    """[perms] uint64 MinHash signature of the word k-shingles of `text`.

    Hash function i is h_i(x) = mix64(x XOR s_i) with a random 64-bit s_i. (The textbook
    (a x + b) mod p needs 128-bit products; without them, as with 32-bit a and x, the
    functions are too correlated and the Jaccard estimate is biased: a test caught it.)
    """
    salts = np.random.default_rng(seed).integers(0, 2**63, size=perms, dtype=np.uint64)
    signature = np.full(perms, np.iinfo(np.uint64).max, np.uint64)
    for batch in shingle_batches(text, k):  # a running minimum: memory bounded by one batch
        x = _hash64(set(batch))
        signature = np.minimum(signature, _mix64(salts[:, None] ^ x[None, :]).min(axis=1))
    return signature


def near_duplicates(
    texts: list[str], threshold: float, perms: int, bands: int, k: int, seed: int = 0
) -> list[int]:
    """Indices of documents that are near-duplicates of an earlier kept one (LSH, see above)."""
    sigs = np.stack([minhash_signature(t, k, perms, seed) for t in texts])
    rows = perms // bands
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(sigs[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for members in buckets.values():
            for j in members[1:]:
                if np.mean(sigs[members[0]] == sigs[j]) >= threshold:
                    ri, rj = root(members[0]), root(j)
                    parent[max(ri, rj)] = min(ri, rj)
    return [i for i in range(len(texts)) if root(i) != i]


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(len(a | b), 1)


def near_duplicates_reference(texts: list[str], threshold: float, k: int) -> list[int]:
    """All-pairs exact Jaccard: the O(n^2) definition that LSH approximates."""
    sets = [shingles(t, k) for t in texts]
    kept: list[int] = []
    dups = []
    for i, s in enumerate(sets):
        if any(jaccard(s, sets[j]) >= threshold for j in kept):
            dups.append(i)
        else:
            kept.append(i)
    return dups

"""decode(encode(text)) == text on arbitrary Unicode, for every tokenizer where that is true.

True: bytes, byte-level BPE (ours, and the same file through `tokenizers`). True for any text
without U+2581 "▁" (which SentencePiece uses for the space and so decodes to " "): our unigram
and SentencePiece models trained by `train_sentencepiece` (identity normalization, whitespace
kept, byte fallback). Not true: WordPiece (lowercasing, accent stripping, lost spacing, [UNK]),
tested in test_wordpiece.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.tokenizers import ByteTokenizer, load_tokenizer
from llm.tokenizers.bpe import train_bpe
from llm.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
from llm.tokenizers.unigram_train import train_unigram

# Mostly English letters and spaces (so learned merges fire), plus any code point UTF-8 can
# encode (lone surrogates are not text: every tokenizer raises UnicodeEncodeError on them).
TEXT = st.text(
    st.one_of(
        st.sampled_from(list("the quick brown fox, THE END.\n\t  ")), st.characters(codec="utf-8")
    ),
    max_size=80,
)
NO_SPM_SPACE = TEXT.map(lambda t: t.replace("\u2581", ""))
SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def tokenizers(corpus, corpus_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    bpe = train_bpe(corpus[:400], 500)
    bpe.save(d / "bpe.json")
    unigram = train_unigram(corpus[:400], 500)
    spm_paths = [
        train_sentencepiece([corpus_file], d / f"{m}.model", 500, m) for m in ("bpe", "unigram")
    ]
    return {
        "exact": [ByteTokenizer(), bpe, load_tokenizer(str(d / "bpe.json"))],
        "no_spm_space": [unigram, *(SentencePieceTokenizer(p) for p in spm_paths)],
    }


@SETTINGS
@given(text=TEXT)
def test_byte_and_byte_level_bpe(tokenizers, text):
    for tok in tokenizers["exact"]:
        assert tok.decode(tok.encode(text)) == text, type(tok).__name__


@SETTINGS
@given(text=NO_SPM_SPACE)
def test_unigram_and_sentencepiece(tokenizers, text):
    for tok in tokenizers["no_spm_space"]:
        assert tok.decode(tok.encode(text)) == text, type(tok).__name__


def test_the_documented_exception(tokenizers):
    for tok in tokenizers["no_spm_space"]:
        assert tok.decode(tok.encode("a\u2581b")) == "a b"

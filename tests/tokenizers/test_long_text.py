"""`encode_pieces`: a long text encoded piece by piece gives exactly the whole-text ids, for
every tokenizer we train and the byte tokenizer (docs/reliability.md, "Bounded memory")."""

from __future__ import annotations

import pytest

from llm.tokenizers import ByteTokenizer, load_tokenizer
from llm.tokenizers.long_text import encode_pieces
from llm.tokenizers.train import ALGORITHMS, train_tokenizer


@pytest.fixture(scope="module")
def tokenizers(corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("long_text")
    trained = {a: load_tokenizer(str(train_tokenizer(a, [corpus_file], 600, out / a)))
               for a in ALGORITHMS}  # fmt: skip
    return trained | {"byte": ByteTokenizer()}


@pytest.mark.parametrize("name", [*ALGORITHMS, "byte"])
@pytest.mark.parametrize("one_line", [True, False])
def test_pieces_concatenate_to_the_whole_text_ids(tokenizers, held_out, name, one_line):
    tok = tokenizers[name]
    text = held_out.replace("\n", " ") if one_line else held_out
    whole = tok.encode(text)
    pieces = list(encode_pieces(tok, text, chunk_chars=300))
    assert [i for piece in pieces for i in piece] == whole
    # the text was really cut: about one piece per 300 characters, not one piece in all
    assert len(pieces) > len(text) // 600, (len(pieces), len(text))


def test_a_short_text_is_one_piece(tokenizers):
    tok = tokenizers["bpe"]
    assert list(encode_pieces(tok, "to be or not to be", chunk_chars=300)) == [
        tok.encode("to be or not to be")
    ]


def test_no_whitespace_is_encoded_whole_but_correctly(tokenizers):
    """Nowhere to cut (no whitespace): the rest is encoded in one piece, never split blindly."""
    tok = tokenizers["bpe"]
    text = "abracadabra" * 100
    assert list(encode_pieces(tok, text, chunk_chars=50)) == [tok.encode(text)]
    byte = tokenizers["byte"]  # bytes may be cut anywhere
    assert len(list(encode_pieces(byte, text, chunk_chars=50))) == 22


class _Spy:
    """The bpe tokenizer, recording the length of every text it is asked to encode."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text):
        self.lengths.append(len(text))
        return self.tok.encode(text)


def test_shard_of_a_long_document_is_written_piece_by_piece(tokenizers, held_out, tmp_path,
                                                            monkeypatch):  # fmt: skip
    import llm.data.tokenized as tokenized
    from llm.config import DataConfig

    monkeypatch.setattr(tokenized, "CHUNK_CHARS", 300)
    spy = _Spy(tokenizers["bpe"])
    long_line = held_out.replace("\n", " ")
    docs = ["a short one", long_line, "another short one"]
    shard = tokenized.tokenize_documents(docs, spy, DataConfig(read_threads=1), tmp_path)
    for i, doc in enumerate(docs):
        want = [spy.bos_id, *spy.tok.encode(doc), spy.eos_id]
        assert shard.document(i).tolist() == want
    assert len(long_line) > 10_000 and max(spy.lengths) < 1_000  # never encoded whole

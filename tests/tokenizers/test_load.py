"""`load_tokenizer(spec)`: every kind of spec, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from llm.tokenizers import ByteTokenizer, Tokenizer, encode_batch, load_tokenizer
from llm.tokenizers.bpe import train_bpe
from llm.tokenizers.hf import HFTokenizer
from llm.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def files(corpus, corpus_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    (d / "bpe").mkdir()
    train_bpe(corpus[:300], 400).save(d / "bpe" / "tokenizer.json")
    (d / "spm").mkdir()
    train_sentencepiece([corpus_file], d / "spm" / "tokenizer.model", 400, "unigram")
    return d


def test_each_spec_kind(files):
    cases = {
        "byte": ByteTokenizer,
        str(files / "bpe" / "tokenizer.json"): HFTokenizer,
        str(files / "bpe"): HFTokenizer,
        str(files / "spm" / "tokenizer.model"): SentencePieceTokenizer,
        str(files / "spm"): SentencePieceTokenizer,
    }
    for spec, cls in cases.items():
        tok = load_tokenizer(spec)
        assert type(tok) is cls and isinstance(tok, Tokenizer), spec
        assert tok.decode(tok.encode("to be, or not")) == "to be, or not"
        assert encode_batch(tok, ["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]


def test_bad_specs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tokenizer 'gpt2'.*'byte'"):
        load_tokenizer("gpt2")
    with pytest.raises(FileNotFoundError, match=r"nope\.model"):
        load_tokenizer(str(tmp_path / "nope.model"))
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_tokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path))

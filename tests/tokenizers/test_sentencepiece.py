"""SentencePiece training and loading through our wrapper: ids, specials, exact round trip."""

from __future__ import annotations

import pytest

from llm.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
from llm.tokenizers.specials import DEFAULT_SPECIALS


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / f"{request.param}.model"
    path = train_sentencepiece([corpus_file], out, 600, request.param)
    assert path == out
    return SentencePieceTokenizer(path)


def test_special_ids_follow_our_layout(tok):
    names = DEFAULT_SPECIALS.as_list()
    assert [tok.token_to_id(n) for n in names] == list(range(1, 1 + len(names)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (1, 2, 3)
    assert tok.token_to_id("<unk>") == 0 and tok.token_to_id("no such piece") is None
    assert tok.vocab_size == 600


def test_exact_round_trip_and_specials_stay_text(tok, held_out):
    assert tok.decode(tok.encode(held_out)) == held_out
    marker = DEFAULT_SPECIALS.user
    assert tok.token_to_id(marker) not in tok.encode(f"say {marker} hi")
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id, tok.pad_id]) == "hi"
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        train_sentencepiece([tmp_path / "missing.txt"], tmp_path / "x", 100)
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        train_sentencepiece([], tmp_path / "x", 100, "wordpiece")
    with pytest.raises(FileNotFoundError, match=r"nothing\.model"):
        SentencePieceTokenizer(tmp_path / "nothing.model")

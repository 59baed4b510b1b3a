"""WordPiece from scratch vs Hugging Face `tokenizers` (trainer, normalizer, encoder, decoder).

Hugging Face's WordPiece trainer numbers the "##c" continuation symbols in hash-map order, which
changes from run to run and decides ties between equally frequent pairs: two runs of the
reference itself can differ. Passing our base symbols as its leading special tokens pins those
ids to ours; with equal ids, the trained vocabularies must be identical, id for id.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from llm.tokenizers import bert_text
from llm.tokenizers.wordpiece import (
    BERT_SPECIALS,
    WordPieceTokenizer,
    learn_wordpiece,
    train_wordpiece,
)

VOCAB = 900


def _hf_wordpiece(corpus: list[str], specials: list[str]) -> Tokenizer:
    hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer()
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False
    )
    hf.train_from_iterator(corpus, trainer)
    return hf


@pytest.fixture(scope="module")
def learned(corpus):
    return learn_wordpiece(corpus, VOCAB)


@pytest.fixture(scope="module")
def ours(learned):
    return WordPieceTokenizer(learned.vocab)


@pytest.fixture(scope="module")
def reference(ours):
    """Hugging Face's WordPiece model and pipeline, loaded with our vocabulary."""
    return Tokenizer.from_str(json.dumps(ours.to_json()))


def test_vocabulary_matches_hf_trainer_given_equal_base_ids(corpus, learned):
    base = learned.vocab[len(BERT_SPECIALS) : learned.n_base]
    hf = _hf_wordpiece(corpus, [*BERT_SPECIALS, *base])
    assert {t: i for i, t in enumerate(learned.vocab)} == hf.get_vocab()
    assert len(learned.vocab) - learned.n_base > 200  # merges, not only the alphabet


def test_base_symbols_match_an_unpinned_hf_run(corpus, learned):
    """The set of characters and "##c" symbols does not depend on hash order."""
    hf_vocab = _hf_wordpiece(corpus, list(BERT_SPECIALS)).get_vocab()
    base = set(learned.vocab[len(BERT_SPECIALS) : learned.n_base])
    hf_base = {t for t in hf_vocab if len(t.removeprefix("##")) == 1}
    assert base == hf_base


def test_heldout_encodings_and_decoding_match_hf(ours, reference, held_out):
    long_word = "x" * 101  # over max_input_chars_per_word: [UNK]
    text = held_out + f" {long_word} caf\u00e9s UNSEEN\u0416"
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ours.token_to_id("[UNK]") in ids
    assert ours.decode(ids) == reference.decode(ids)


TRICKY = [
    "Héllo, WORLD!! It's 3.14\u2014really?",
    "tab\tnew\nline\r\u00a0nbsp \u3000ideographic space",
    "\u65e5\u672c\u8a9eのテキスト and \ud55c\uad6d\uc5b4",
    "ctrl\x00\x07\x1b chars\ufffd and \u200bzero-width",
    "\u00c5ngstr\u00f6m na\u00efve \u0130stanbul \u1e9e",
    "(brackets) [x] {y} <z> \u00abguillemets\u00bb \u201cquotes\u201d #tag @user $5 %",
]


@pytest.mark.parametrize("text", TRICKY)
def test_normalizer_and_pretokenizer_match_bert(text):
    normalized = normalizers.BertNormalizer().normalize_str(text)
    assert bert_text.normalize(text) == normalized
    hf_words = [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalized)]
    assert bert_text.pretokenize(normalized) == hf_words


def test_not_a_round_trip(ours):
    """Documented: case, accents and spacing are lost."""
    assert ours.decode(ours.encode("Hello , World")) == "hello, world"


def test_vocab_txt_and_json_load(ours, tmp_path, held_out):
    (tmp_path / "vocab.txt").write_text("\n".join(ours.vocab) + "\n", encoding="utf-8")
    from_txt = WordPieceTokenizer.load(tmp_path / "vocab.txt")
    ours.save(tmp_path / "tokenizer.json")
    from_json = WordPieceTokenizer.load(tmp_path / "tokenizer.json")
    assert from_txt.encode(held_out) == from_json.encode(held_out) == ours.encode(held_out)
    assert (from_json.pad_id, from_json.bos_id, from_json.eos_id) == (0, 2, 3)


def test_unk_is_required(corpus):
    with pytest.raises(ValueError, match="must include"):
        train_wordpiece(corpus, 300, special_tokens=["[PAD]", "[CLS]", "[SEP]"])

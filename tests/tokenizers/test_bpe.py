"""Byte-level BPE from scratch vs Hugging Face `tokenizers` on the same corpus and settings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm.tokenizers import bytelevel
from llm.tokenizers.bpe import BPETokenizer, train_bpe
from llm.tokenizers.specials import DEFAULT_SPECIALS


def _hf_bpe(corpus: list[str], vocab_size: int, min_frequency: int = 0) -> Tokenizer:
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=DEFAULT_SPECIALS.as_list(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus, trainer)
    return hf


@pytest.fixture(scope="module", params=[(700, 0), (1200, 3)], ids=["v700", "v1200-minfreq3"])
def pair(request, corpus):
    vocab_size, min_frequency = request.param
    ours = train_bpe(corpus, vocab_size, min_frequency=min_frequency)
    return ours, _hf_bpe(corpus, vocab_size, min_frequency)


def test_vocabulary_and_merges_match_hf_trainer(pair):
    ours, hf = pair
    assert ours.tok_to_id == hf.get_vocab()
    hf_merges = [tuple(m) for m in json.loads(hf.to_str())["model"]["merges"]]
    assert [tuple(m) for m in ours.to_json()["model"]["merges"]] == hf_merges
    assert len(hf_merges) > 300  # the comparison covers real merging, not just the alphabet


def test_heldout_encodings_match_hf(pair, held_out):
    ours, hf = pair
    assert ours.encode(held_out) == hf.encode(held_out).ids
    for line in held_out.splitlines(keepends=True):
        assert ours.encode(line) == hf.encode(line).ids, line


def test_hf_reads_our_file_and_we_read_it_back(pair, held_out, tmp_path):
    ours, _ = pair
    path = tmp_path / "tokenizer.json"
    ours.save(path)
    hf = Tokenizer.from_file(str(path))
    assert hf.encode(held_out).ids == ours.encode(held_out)
    assert hf.decode(ours.encode(held_out)) == held_out
    again = BPETokenizer.load(path)
    assert again.encode(held_out) == ours.encode(held_out)
    assert (again.bos_id, again.eos_id, again.pad_id) == (1, 2, 0)


def test_byte_table_is_gpt2s():
    table = bytelevel.bytes_to_unicode()
    assert len(set(table.values())) == 256
    # Golden values from GPT-2's encoder: space is "Ġ", newline "Ċ", "!" maps to itself.
    assert (table[ord(" ")], table[ord("\n")], table[ord("!")]) == ("Ġ", "Ċ", "!")
    assert bytelevel.pretokenize("I'll go  now") == ["I", "'ll", "Ġgo", "Ġ", "Ġnow"]


def test_vocab_too_small_is_rejected(corpus):
    with pytest.raises(ValueError, match="vocab_size=200"):
        train_bpe(corpus, 200)


def test_file_without_bytes_is_rejected(tmp_path):
    path = tmp_path / "tokenizer.json"
    data = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel"}}  # fmt: skip
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="byte symbols missing"):
        BPETokenizer.load(path)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        st.one_of(st.sampled_from(list("the ing, 's 're 12 \n\t  ")), st.characters(codec="utf-8")),
        max_size=60,
    )
)
def test_encodings_match_hf_on_arbitrary_unicode(pair, text):
    """Pre-tokenization regex (\\p{L}, \\p{N}, \\s classes) and merging agree on any text."""
    ours, hf = pair
    assert ours.encode(text) == hf.encode(text).ids

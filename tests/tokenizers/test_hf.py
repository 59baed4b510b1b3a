"""`tokenizer.json` files through the `tokenizers` library behind our protocol."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm.tokenizers.hf import HFTokenizer


@pytest.fixture(scope="module")
def gpt2_like(corpus, tmp_path_factory):
    """A GPT-2-style file: byte-level BPE whose only special token is <|endoftext|>."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    return hf, path


def test_matches_the_library_and_finds_specials(gpt2_like, held_out):
    hf, path = gpt2_like
    tok = HFTokenizer(path)
    assert tok.encode(held_out) == hf.encode(held_out).ids
    assert tok.bos_id == tok.eos_id == tok.pad_id == hf.token_to_id("<|endoftext|>")
    assert tok.vocab_size == 500
    assert tok.encode_batch([held_out, "x"]) == [tok.encode(held_out), tok.encode("x")]


def test_special_token_text_is_encoded_as_text(gpt2_like):
    _, path = gpt2_like
    tok = HFTokenizer(path)
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_bad_files_are_named(gpt2_like, tmp_path):
    _, path = gpt2_like
    data = json.loads(path.read_text())
    data["added_tokens"] = []
    del data["model"]["vocab"]["<|endoftext|>"]
    data["model"]["vocab"] = {t: i for i, t in enumerate(data["model"]["vocab"])}
    no_specials = tmp_path / "no_specials.json"
    no_specials.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no_specials.json: no padding token"):
        HFTokenizer(no_specials)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not a valid tokenizer\.json"):
        HFTokenizer(broken)

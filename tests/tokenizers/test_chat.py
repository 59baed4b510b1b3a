"""Chat template: role markers as single special ids, or as text when a vocabulary lacks them."""

from __future__ import annotations

import pytest

from llm.tokenizers import ByteTokenizer, apply_chat
from llm.tokenizers.bpe import train_bpe

MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]


def test_markers_are_special_ids(corpus):
    tok = train_bpe(corpus[:200], 400)
    ids = apply_chat(tok, MESSAGES, add_generation_prompt=True)
    sid, uid, aid, end = (
        tok.token_to_id(f"<|{n}|>") for n in ("system", "user", "assistant", "end")
    )
    expected = [tok.bos_id, sid, *tok.encode("Be terse."), end, uid, *tok.encode("Hi"), end, aid]
    assert ids == expected


def test_byte_tokenizer_spells_markers():
    tok = ByteTokenizer()
    ids = apply_chat(tok, MESSAGES[1:])
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == "<|user|>Hi<|end|>"


def test_bad_messages_are_named():
    with pytest.raises(ValueError, match=r"messages\[1\]: role 'robot'"):
        apply_chat(ByteTokenizer(), [MESSAGES[0], {"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\]: content must be a string"):
        apply_chat(ByteTokenizer(), [{"role": "user", "content": None}])

"""SentencePiece models through the `sentencepiece` library: load a `.model`, or train one.

SentencePiece (Kudo & Richardson 2018) treats text as a raw character stream with spaces shown
as "▁", so it needs no language-specific pre-tokenizer. We train with identity normalization,
whitespace kept as is and byte fallback, which makes encode/decode an exact round trip for any
text that does not itself contain "▁" (tests/tokenizers/test_roundtrip.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from llm.tokenizers.specials import DEFAULT_SPECIALS, SpecialTokens


class SentencePieceTokenizer:
    """A loaded SentencePiece model (BPE or unigram) behind the `Tokenizer` protocol."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"SentencePiece model {self.path} does not exist")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        if bos < 0 or eos < 0:
            raise ValueError(f"{self.path}: the model defines no BOS or EOS piece")
        self._bos, self._eos = bos, eos
        # Padding is masked out of the loss, so a model without a pad piece pads with EOS.
        self._pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else eos

    vocab_size = property(lambda self: self._sp.vocab_size())
    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if self._sp.is_unknown(i) and token != self._sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """Control pieces (BOS, EOS, PAD, chat markers) decode to nothing."""
        return self._sp.decode(list(ids))


def train_sentencepiece(
    files: Sequence[str | Path],
    out: str | Path,
    vocab_size: int,
    model_type: str = "bpe",
    *,
    specials: SpecialTokens = DEFAULT_SPECIALS,
    character_coverage: float = 0.9995,
    extra_options: dict | None = None,
) -> Path:
    """Train with `spm_train` on text files (one sentence per line); returns the `.model` path.

    Ids: <unk> 0, then our specials in order (pad 1, bos 2, eos 3, chat markers as control
    pieces), then the 256 byte pieces, then the learned pieces.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"{model_type=} must be 'bpe' or 'unigram'")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"training files not found: {', '.join(missing)}")
    prefix = str(out)[: -len(".model")] if str(out).endswith(".model") else str(out)
    try:
        _spm_train(spm, files, prefix, vocab_size, model_type, specials, character_coverage,
                   extra_options)  # fmt: skip
    except RuntimeError as err:  # spm's text leads with its C++ file and the failed check
        reason = str(err).split("] ", 1)[-1].strip()
        too_high = re.search(r"Please set it to a value <= (\d+)", reason)
        if too_high:
            reason = (f"vocab_size={vocab_size} is more than this text supports (at most "
                      f"{too_high[1]}): lower it or give more text")  # fmt: skip
        raise ValueError(f"sentencepiece {model_type} training failed: {reason}") from None
    return Path(prefix + ".model")


def _spm_train(spm, files, prefix, vocab_size, model_type, specials, character_coverage,
               extra_options) -> None:  # fmt: skip
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in files],
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        unk_id=0,
        pad_id=1,
        bos_id=2,
        eos_id=3,
        unk_piece="<unk>",
        pad_piece=specials.pad,
        bos_piece=specials.bos,
        eos_piece=specials.eos,
        control_symbols=specials.as_list()[3:],
        minloglevel=2,
        **(extra_options or {}),
    )

"""Unigram language-model tokenizer from scratch (Kudo 2018, "Subword Regularization"): encode
with Viterbi, decode, and read/write SentencePiece `.model` files.

Each piece has a log-probability (its score); a text's segmentation is the sequence of pieces
with the highest total score, found by dynamic programming over character positions (Viterbi).
Text is prepared as SentencePiece does: spaces become "▁" and one "▁" is prepended, so pieces
carry their leading space and decoding is a plain concatenation. A character no piece covers is
spelled as its UTF-8 bytes with the <0xXX> byte pieces ("byte fallback"), so nothing is lost.

The Viterbi pass mirrors SentencePiece's `EncodeOptimized` (unigram_model.cc) exactly, so the two
agree token for token given the same pieces and scores: sums are rounded to float32 as in C++,
an unknown character costs min(score) - 10, and among equal scores the earlier start wins.
Normalization is identity (we do not implement NFKC tables); `remove_extra_whitespaces` is
honoured when a loaded model asks for it.

Round trip: exact for any text without U+2581 ("▁" itself decodes to a space) when
`remove_extra_whitespaces` is off, which is how our trainer writes models.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm.tokenizers.specials import DEFAULT_SPECIALS

SPACE = "\u2581"  # "▁", SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # proto enum values
UNK_PENALTY = 10.0  # SentencePiece's kUnkPenalty
_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """Round to the nearest float32 (C++ adds two floats in float precision)."""
    return _F32.unpack(_F32.pack(x))[0]


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


@dataclass(frozen=True)
class Piece:
    text: str  # the piece, with "▁" for spaces
    score: float  # log-probability (float32 in .model files)
    kind: int = NORMAL  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED or BYTE


class UnigramTokenizer:
    """Viterbi segmentation over scored pieces, SentencePiece-compatible."""

    def __init__(
        self,
        pieces: Sequence[Piece],
        *,
        add_dummy_prefix: bool = True,
        remove_extra_whitespaces: bool = False,
        where: str = "<memory>",
    ):
        self.pieces = list(pieces)
        self.add_dummy_prefix = add_dummy_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.piece_to_id = {p.text: i for i, p in enumerate(self.pieces)}
        unk = [i for i, p in enumerate(self.pieces) if p.kind == UNKNOWN]
        if len(unk) != 1:
            raise ValueError(f"{where}: need exactly one unknown piece, found {len(unk)}")
        self.unk_id = unk[0]
        self.byte_ids = {
            int(p.text[3:5], 16): i for i, p in enumerate(self.pieces) if p.kind == BYTE
        }
        normal = [p.score for p in self.pieces if p.kind == NORMAL]
        self.min_score, max_score = min(normal, default=0.0), max(normal, default=0.0)
        self._match: dict[str, tuple[int, float]] = {}
        for i, p in enumerate(self.pieces):
            if p.kind == NORMAL:
                self._match[p.text] = (i, f32(p.score))
            elif p.kind == USER_DEFINED:
                self._match[p.text] = (i, f32(len(p.text.encode()) * max_score - 0.1))
        self.max_len = max((len(t) for t in self._match), default=1)
        # If no piece has an inner "▁", words between spaces can be segmented (and cached) alone.
        self._split_words = not any(SPACE in t[1:] for t in self._match)
        self._cache: dict[str, list[int]] = {}
        names = {p.text: i for i, p in enumerate(self.pieces) if p.kind == CONTROL}
        self._bos = names.get(DEFAULT_SPECIALS.bos, names.get("<s>", -1))
        self._eos = names.get(DEFAULT_SPECIALS.eos, names.get("</s>", -1))
        if min(self._bos, self._eos) < 0:
            raise ValueError(f"{where}: needs control pieces for BOS and EOS")
        # Padding is masked out of the loss, so a model without a pad piece pads with EOS.
        self._pad = names.get(DEFAULT_SPECIALS.pad, names.get("<pad>", self._eos))

    vocab_size = property(lambda self: len(self.pieces))
    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)

    def token_to_id(self, token: str) -> int | None:
        return self.piece_to_id.get(token)

    def id_to_token(self, i: int) -> str:
        return self.pieces[i].text

    def normalize(self, text: str) -> str:
        """Spaces -> "▁", plus the dummy prefix; with `remove_extra_whitespaces`, SentencePiece
        drops leading spaces, collapses space runs and strips trailing "▁" (typed ones too)."""
        if self.remove_extra_whitespaces:
            text = " ".join(w for w in text.split(" ") if w)
        if not text:
            return ""
        text = text.replace(" ", SPACE)
        text = SPACE + text if self.add_dummy_prefix else text
        return text.rstrip(SPACE) if self.remove_extra_whitespaces else text

    def viterbi(self, s: str) -> list[tuple[str, int]]:
        """Best segmentation of normalized `s` as (piece text, id); unknown chars get unk_id."""
        n, unk_score = len(s), f32(self.min_score - UNK_PENALTY)
        best: list[float] = [0.0] * (n + 1)
        back: list[tuple[int, int]] = [(-1, -1)] * (n + 1)  # (start, id) of the last piece
        for start in range(n):
            here, single = best[start], False
            for end in range(start + 1, min(n, start + self.max_len) + 1):
                hit = self._match.get(s[start:end])
                if hit is None:
                    continue
                score = f32(hit[1] + here)
                if back[end][0] == -1 or score > best[end]:
                    best[end], back[end] = score, (start, hit[0])
                single = single or end == start + 1
            if not single:
                score = f32(unk_score + here)
                if back[start + 1][0] == -1 or score > best[start + 1]:
                    best[start + 1], back[start + 1] = score, (start, self.unk_id)
        out, end = [], n
        while end > 0:
            start, i = back[end]
            out.append((s[start:end], i))
            end = start
        return out[::-1]

    def _encode_normalized(self, s: str) -> list[int]:
        ids: list[int] = []
        for piece, i in self.viterbi(s):
            if i != self.unk_id:
                ids.append(i)
            elif self.byte_ids:
                ids.extend(self.byte_ids[b] for b in piece.encode("utf-8"))
            elif not ids or ids[-1] != self.unk_id:  # runs of unknowns become one <unk>
                ids.append(i)
        return ids

    def encode(self, text: str) -> list[int]:
        s = self.normalize(text)
        if not self._split_words:
            return self._encode_normalized(s)
        ids: list[int] = []
        for word in _split_before_spaces(s):
            if word not in self._cache:
                if len(self._cache) > 200_000:
                    self._cache.clear()
                self._cache[word] = self._encode_normalized(word)
            ids.extend(self._cache[word])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Control pieces are dropped, byte runs are decoded as UTF-8, "▁" becomes a space."""
        parts, pending = [], bytearray()
        for i in ids:
            p = self.pieces[i]
            if p.kind == BYTE:
                pending.append(int(p.text[3:5], 16))
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            if p.kind == UNKNOWN:
                parts.append(" \u2047 ")
            elif p.kind in (NORMAL, USER_DEFINED):
                parts.append(p.text)
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        text = "".join(parts).replace(SPACE, " ")
        return text[1:] if self.add_dummy_prefix and text.startswith(" ") else text

    def save(self, path: str | Path) -> None:
        """Write a SentencePiece `.model` that `sentencepiece` loads and encodes identically."""
        Path(path).write_bytes(to_model_proto(self).SerializeToString())

    @classmethod
    def load(cls, path: str | Path) -> UnigramTokenizer:
        """Read a unigram SentencePiece `.model` with identity normalization."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(Path(path).read_bytes())
        if proto.trainer_spec.model_type != pb.TrainerSpec.UNIGRAM:
            raise ValueError(
                f"{path}: not a unigram model (model_type {proto.trainer_spec.model_type})"
            )
        norm = proto.normalizer_spec
        if norm.name not in ("identity", "") or norm.precompiled_charsmap:
            raise ValueError(
                f"{path}: normalization {norm.name!r} is not supported here (identity only); "
                "load it with load_tokenizer, which uses the sentencepiece library"
            )
        pieces = [Piece(p.piece, p.score, p.type) for p in proto.pieces]
        return cls(
            pieces,
            add_dummy_prefix=norm.add_dummy_prefix,
            remove_extra_whitespaces=norm.remove_extra_whitespaces,
            where=str(path),
        )


def _split_before_spaces(s: str) -> list[str]:
    """Cut "▁a▁▁b" before every "▁": ["▁a", "▁", "▁b"]."""
    words, start = [], 0
    for i in range(1, len(s)):
        if s[i] == SPACE:
            words.append(s[start:i])
            start = i
    if s:
        words.append(s[start:])
    return words


def to_model_proto(tok: UnigramTokenizer):
    """The SentencePiece ModelProto of `tok` (unigram, identity normalization)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for p in tok.pieces:
        proto.pieces.add(piece=p.text, score=p.score, type=p.kind)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.UNIGRAM
    spec.vocab_size = len(tok.pieces)
    spec.byte_fallback = bool(tok.byte_ids)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = (
        tok.unk_id,
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
    )
    spec.unk_piece = tok.pieces[tok.unk_id].text
    spec.bos_piece, spec.eos_piece = tok.pieces[tok.bos_id].text, tok.pieces[tok.eos_id].text
    spec.pad_piece = tok.pieces[tok.pad_id].text
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = tok.add_dummy_prefix
    norm.remove_extra_whitespaces = tok.remove_extra_whitespaces
    norm.escape_whitespaces = True
    return proto

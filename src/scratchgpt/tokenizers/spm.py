"""SentencePiece tokenizer, trained through the `sentencepiece` library (the `spm` extra), for comparison.

Owns `SentencePieceTokenizer`: `train` (texts -> model, all in memory) and its JSON form, which holds the
whole model proto in base64 so a run directory needs no other file. Training settings keep text intact:
BPE model, identity normalisation, no dummy prefix, no whitespace squeezing, digits split, byte fallback
(an unseen character becomes its UTF-8 bytes, never `<unk>`). So `decode(encode(s)) == s` except for the
character U+2581 (SentencePiece's own stand-in for a space), which comes back as a space.
`sentencepiece` is imported only when one is built. Does not read files.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import CheckpointError, UserError
from .base import Tokenizer


def _spm() -> Any:
    try:
        import sentencepiece
    except ImportError:
        raise UserError(
            "the SentencePiece tokenizer needs the sentencepiece package: pip install 'scratchgpt[spm]'"
        ) from None
    return sentencepiece


class SentencePieceTokenizer(Tokenizer):
    kind = "spm"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        try:
            self._sp = _spm().SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, TypeError, OSError) as e:
            raise CheckpointError(f"SentencePiece model is damaged: {e}") from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "bpe") -> SentencePieceTokenizer:
        """Train in memory on texts (one sentence per line); vocab_size is an upper bound for a small corpus."""
        lines = (line for text in texts for line in text.split("\n"))
        buf = io.BytesIO()
        try:
            _spm().SentencePieceTrainer.train(
                sentence_iterator=lines, model_writer=buf, vocab_size=vocab_size, model_type=model_type,
                byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
                character_coverage=1.0, hard_vocab_limit=False, max_sentence_length=1 << 20,
                num_threads=max(1, min(8, os.cpu_count() or 1)), minloglevel=2, pad_id=-1,
            )
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise UserError(f"SentencePiece could not train a {vocab_size}-token vocabulary: {detail}") from None
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise UserError(f"a token id in {ids[:8]} is not in this vocabulary of {self.vocab_size}")
        return self._sp.decode(ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": base64.b64encode(self.model_proto).decode("ascii")}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SentencePieceTokenizer:
        try:
            return cls(base64.b64decode(obj["model"], validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise CheckpointError("SentencePiece tokenizer JSON has no valid base64 'model'") from None

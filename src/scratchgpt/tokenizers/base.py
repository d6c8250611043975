"""The `Tokenizer` protocol, the registry of kinds, and loading one back from its JSON form.

Owns the protocol every tokenizer follows (`kind`, `vocab_size`, `encode`, `decode`, `to_json`, a
`from_json` classmethod; `encode_array` where it is cheap), `KINDS` and `tokenizer_from_json`, which
dispatches on the `kind` field. Does not own any tokenizer's algorithm (one module per kind) or building
one from a name or a directory (`resolve.py`).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import CheckpointError
from .bpe import BPETokenizer
from .char import CharTokenizer
from .gpt2 import GPT2Tokenizer
from .spm import SentencePieceTokenizer
from .word import WordTokenizer


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


KINDS: dict[str, Any] = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "bpe": BPETokenizer,
    "gpt2": GPT2Tokenizer,
    "spm": SentencePieceTokenizer,
}


def tokenizer_from_json(obj: Any) -> Tokenizer:
    """Rebuild a tokenizer from `to_json()` output; a malformed object is a CheckpointError."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in KINDS:
        raise CheckpointError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind].from_json(obj)

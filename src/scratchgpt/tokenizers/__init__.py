"""Tokenizers: the `Tokenizer` protocol and loading one back from its JSON form.

Owns the protocol every tokenizer follows (`encode`, `decode`, `vocab_size`, `to_json`) and
`tokenizer_from_json`, which dispatches on the `kind` field. Does not read corpora from disk.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import CheckpointError
from .char import CharTokenizer


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


KINDS: dict[str, Any] = {"char": CharTokenizer}


def tokenizer_from_json(obj: Any) -> Tokenizer:
    """Rebuild a tokenizer from `to_json()` output; a malformed object is a CheckpointError."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in KINDS:
        raise CheckpointError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind].from_json(obj)


__all__ = ["CharTokenizer", "Tokenizer", "tokenizer_from_json"]

"""The registry of tokenizer kinds, and loading a tokenizer back from its JSON form.

Owns `KINDS` (the `kind` field of tokenizer.json -> its class) and `tokenizer_from_json`, which dispatches on
that field. Does not own the interface (`base.py`), any kind's algorithm (one module per kind) or building one
from a name or a directory (`resolve.py`).
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .base import Tokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .gpt2 import GPT2Tokenizer
from .spm import SentencePieceTokenizer
from .word import WordTokenizer

KINDS: dict[str, type[Tokenizer]] = {
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

"""Character-level tokenizer: the vocabulary is the sorted set of characters in the corpus.

Owns `CharTokenizer`. Encoding is vectorised with numpy (code points looked up in the sorted vocabulary)
so a megabyte encodes in milliseconds. An unknown character is a `UserError` naming it and its position,
unless `errors="replace"` (swap it for a stand-in character) or `errors="ignore"` (drop it).

Special tokens (a chat template's `<|user_start|>` ...) get reserved ids after the characters. Text never
encodes to them (a user cannot forge one by typing its name); they decode to their names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CheckpointError, UserError
from .base import Tokenizer


def _codepoints(text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate (undecodable bytes in argv arrive as U+DC80..U+DCFF) is then an
    # unknown character like any other, not a UnicodeEncodeError
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str] | str, special_tokens: list[str] | tuple[str, ...] = ()):
        chars = sorted(set(chars))
        if not chars or any(len(c) != 1 for c in chars):
            raise ValueError("a CharTokenizer needs single characters")
        if len(set(special_tokens)) != len(special_tokens) or any(not isinstance(s, str) or not s for s in special_tokens):
            raise ValueError("special tokens must be distinct, non-empty strings")
        self.chars = chars
        self.specials = list(special_tokens)  # ids len(chars), len(chars) + 1, ...
        self.stoi = {c: i for i, c in enumerate(chars)}
        self._sorted_cp = np.array([ord(c) for c in chars], dtype=np.uint32)
        self.replacement = next((c for c in ("?", " ") if c in self.stoi), chars[0])

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {s: len(self.chars) + i for i, s in enumerate(self.specials)}

    def with_special_tokens(self, names: list[str]) -> CharTokenizer:
        """This tokenizer with `names` added as special tokens (those it has already keep their ids)."""
        return CharTokenizer(self.chars, self.specials + [n for n in names if n not in self.specials])

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        return self.encode_array(text, errors).tolist()

    def encode_array(self, text: str, errors: str = "strict") -> np.ndarray:
        """Encode to an int64 array; errors is strict | replace | ignore."""
        cp = _codepoints(text)
        ids = np.searchsorted(self._sorted_cp, cp)
        ids_clipped = np.minimum(ids, len(self.chars) - 1)
        known = self._sorted_cp[ids_clipped] == cp
        if not known.all():
            if errors == "strict":
                pos = int(np.argmin(known))
                ch = text[pos]
                raise UserError(
                    f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the tokenizer's "
                    f"vocabulary of {len(self.chars)} characters"
                )
            if errors == "replace":
                ids_clipped = np.where(known, ids_clipped, self.stoi[self.replacement])
            else:
                ids_clipped = ids_clipped[known]
        return ids_clipped.astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def decode_after(self, context: list[int], ids: list[int]) -> str:
        return self.decode(ids)  # one character per id: nothing depends on its neighbours

    def fewest_tokens(self, text: str) -> int:
        return len(text)  # exact: one id per character

    def to_json(self) -> dict[str, Any]:
        obj = {"kind": self.kind, "chars": "".join(self.chars)}
        if self.specials:
            obj["special_tokens"] = list(self.specials)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CharTokenizer:
        chars = obj.get("chars")
        if not isinstance(chars, str) or not chars:
            raise CheckpointError("char tokenizer JSON has no 'chars' string")
        specials = obj.get("special_tokens", [])
        try:
            return cls(list(chars), specials)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"char tokenizer JSON is damaged: {e}") from None

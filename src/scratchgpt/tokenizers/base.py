"""The `Tokenizer` base class: what every kind (char, word, bpe, gpt2, spm) offers its callers.

Owns the interface and its defaults, so that nothing that samples, serves, prepares data or scores text ever
asks a tokenizer what it can do (no `getattr` / `hasattr` / `isinstance` probing):
- each kind implements `kind`, `vocab_size`, `encode`, `decode`, `to_json` and the `from_json` classmethod;
- `eot_token`: the `<|endoftext|>` id, None for kinds without one (char, word, spm);
- `special_tokens`: name -> id ({} by default), `special_ids`, `without_special` (ids with those left out);
- `encode_array` (int64 numpy ids; kinds with a faster path override it) and `encode_with_special_tokens`
  (special-token names in the text become their ids: what vLLM's /tokenize does);
- `decode_bytes` (a token's bytes: byte-level kinds give the raw bytes of half a character) and
  `decode_after` (the text of new ids following already-decoded ones: what a text stream shows);
- `fewest_tokens(text)`: a lower bound on `len(encode(text))` that costs nothing (0 unless a kind knows better:
  char gives len(text)), so a server can refuse a megabyte prompt without tokenizing it;
- `with_special_tokens(names)`: this tokenizer with more special tokens (a clear refusal by default);
- `has_chat_template()` and `require_chat_template()`, the one check (and the one message) that a run can chat
  (the template's token names, `CHAT_SPECIALS`, live here so every tokenizer can answer).
Does not own any kind's algorithm (one module per kind), the registry of kinds (`registry.py`) or the chat
template's rendering (`chat.py`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ChatError, UserError

# The chat template's special tokens (chat.py renders conversations with them; fine-tuning adds them)
CHAT_SPECIALS = tuple(f"<|{role}_{edge}|>" for role in ("system", "user", "assistant") for edge in ("start", "end"))

NO_CHAT_TEMPLATE = ("this model has no chat template (it was not fine-tuned on conversations): fine-tune it with "
                    "data.format = \"chat\", or continue text instead (`scratchgpt sample`, /v1/completions)")


class Tokenizer:
    """Text <-> token ids. Subclasses set `kind` and `vocab_size` (an attribute or a property) and implement the
    members that raise NotImplementedError."""

    kind = "tokenizer"
    vocab_size: int  # ids 0 .. vocab_size - 1, special tokens included
    eot_token: int | None = None  # the id of <|endoftext|>, or None when there is none (kinds may compute it)

    # ---- what each kind implements ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special-token names in it are plain text."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """The text of ids; a special token decodes to its name."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Tokenizer:
        raise NotImplementedError

    # ---- defaults ---------------------------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special tokens, name -> id (a chat template's, <|endoftext|>); text never encodes to them."""
        return {}

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.special_tokens.values())

    def without_special(self, ids: list[int]) -> list[int]:
        """ids with the special tokens left out (what an OpenAI-style server shows as text)."""
        special = self.special_ids
        return [i for i in ids if i not in special] if special else list(ids)

    def encode_array(self, text: str) -> np.ndarray:
        """Like encode, as an int64 array."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Token ids of text where each special token's name becomes its id (the rest is plain text)."""
        specials = self.special_tokens
        if not specials:
            return self.encode(text)
        names = sorted(specials, key=len, reverse=True)  # longest first: no name is cut by a shorter one
        ids: list[int] = []
        for k, part in enumerate(re.split("(" + "|".join(map(re.escape, names)) + ")", text)):
            if k % 2:
                ids.append(specials[part])
            elif part:
                ids.extend(self.encode(part))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The UTF-8 bytes of ids (byte-level kinds: the raw bytes, which may end inside a character)."""
        return self.decode(ids).encode("utf-8", errors="surrogatepass")

    def decode_after(self, context: list[int], ids: list[int]) -> str:
        """The text `ids` add after `context` (ids already shown): decoded together, so kinds whose pieces
        depend on their neighbours (a leading space) read right. May end in U+FFFD when `ids` end inside a
        character; a text stream holds that back until the rest arrives."""
        if not context:
            return self.decode(ids)
        base = self.decode(context)
        full = self.decode(context + ids)
        return full[len(base):] if full.startswith(base) else self.decode(ids)

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)) that costs nothing. 0 unless a kind knows better: a token may
        span any number of characters (an unknown word is one id)."""
        return 0

    def with_special_tokens(self, names: list[str]) -> Tokenizer:
        """This tokenizer with `names` added as special tokens (those it has keep their ids)."""
        raise UserError(f"the {self.kind} tokenizer cannot add special tokens (such as a chat template's); the char, "
                        "bpe and gpt2 tokenizers can")

    def has_chat_template(self) -> bool:
        """Whether this tokenizer holds the chat template's special tokens (a run fine-tuned for chat)."""
        have = self.special_tokens
        return all(s in have for s in CHAT_SPECIALS)

    def require_chat_template(self) -> None:
        """Raise the one `ChatError` for a run that cannot chat (the server's 400, `scratchgpt chat`, the API)."""
        if not self.has_chat_template():
            raise ChatError(NO_CHAT_TEMPLATE)


__all__ = ["CHAT_SPECIALS", "NO_CHAT_TEMPLATE", "Tokenizer"]

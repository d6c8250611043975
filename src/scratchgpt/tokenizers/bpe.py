"""Byte-level BPE: our learned vocabulary, encoded fast through tiktoken, plus a pure-Python reference encoder.

Owns `TiktokenTokenizer` (the shared encode/decode surface of every tiktoken-backed tokenizer, also used by
`gpt2.py`), `BPETokenizer` (a vocabulary trained by `bpe_train.py`), its JSON form, and `reference_encode`,
the readable encoder that defines what tiktoken must produce. Does not own training (`bpe_train.py`).

Encoding: the text is pre-split with the tokenizer's regex (`pretokenize.py`); each chunk's UTF-8 bytes that
form a whole token become that token, otherwise the adjacent pair whose concatenation has the lowest rank
(token id) is merged, leftmost first, until no adjacent pair is a token. This is tiktoken's algorithm; the
tests hold the two to the same output on arbitrary Unicode.

Special tokens (`<|endoftext|>`): `encode(text)` treats every string as plain text, so text from a user or
a corpus can never forge a control token; `encode(text, allowed_special="all")` (or a set of names) turns
those exact strings into their special ids. `decode(encode(s)) == s` for every string (a lone surrogate,
which has no UTF-8 form, becomes U+FFFD first, as tiktoken does).

JSON form (tokenizer.json; `format` 1):
    {"kind": "bpe", "format": 1, "pattern": "<the split regex>",
     "vocab": ["<base64 of token 0's bytes>", ...],      # ids 0..255 are the single bytes 0..255, in order
     "merges": [[left_id, right_id], ...],              # token 256 + i is vocab[left] + vocab[right]
     "special_tokens": {"<|endoftext|>": 4095}}         # ids right after the vocabulary
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from typing import Any, Literal

import numpy as np
import tiktoken

from ..errors import CheckpointError, UserError
from .base import Tokenizer
from .pretokenize import compile_pattern

FORMAT = 1
ENDOFTEXT = "<|endoftext|>"

AllowedSpecial = Literal["all"] | Collection[str]


class TiktokenTokenizer(Tokenizer):
    """encode / decode through a `tiktoken.Encoding`; subclasses say where its ranks come from."""

    kind = "tiktoken"
    _enc: tiktoken.Encoding

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        return {s: self._enc.encode_single_token(s) for s in self._enc.special_tokens_set}

    @property
    def eot_token(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    eot_id = eot_token  # the same id under the name meta.json gives it

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken encoding (ranks, special tokens, split pattern) that encodes and decodes."""
        return self._enc

    def encode_with_special_tokens(self, text: str) -> list[int]:
        return self.encode(text, allowed_special="all")

    def _allowed(self, allowed_special: AllowedSpecial) -> set[str]:
        allowed = set(self._enc.special_tokens_set) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - self._enc.special_tokens_set
        if unknown:
            raise UserError(f"{sorted(unknown)[0]!r} is not a special token of this tokenizer")
        return allowed

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of text; special-token strings are plain text unless named in allowed_special."""
        if not allowed_special:
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def encode_array(self, text: str, allowed_special: AllowedSpecial = ()) -> np.ndarray:
        """Like encode, straight into an int64 array (no Python list of a million ints on the way)."""
        allowed = self._allowed(allowed_special) if allowed_special else set()
        try:
            ids = self._enc.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())
        except UnicodeEncodeError:  # a lone surrogate: repair as encode() does, rather than fail
            ids = self._enc.encode_to_numpy(_no_surrogates(text), allowed_special=allowed, disallowed_special=())
        return ids.astype(np.int64)

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The raw bytes of ids: a streaming decoder can hold back a character split across two tokens."""
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, ValueError, OverflowError, TypeError):
            bad = next((i for i in ids if not 0 <= int(i) < self.vocab_size), None)
            raise UserError(f"token id {bad} is not in this tokenizer's vocabulary of {self.vocab_size}") from None

    def decode(self, ids: list[int]) -> str:
        """Text of ids; a character cut between tokens shows as U+FFFD until its other bytes are decoded with it."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class BPETokenizer(TiktokenTokenizer):
    """A byte-level BPE vocabulary we trained: token i is `vocab[i]`, its rank in tiktoken's sense."""

    kind = "bpe"

    def __init__(self, vocab: list[bytes], merges: list[tuple[int, int]], pattern: str,
                 special_tokens: list[str] | tuple[str, ...] = (ENDOFTEXT,), name: str = "scratchgpt-bpe"):
        _check_vocab(vocab, merges)
        self.vocab, self.merges, self.pattern = list(vocab), [tuple(m) for m in merges], pattern
        self.ranks = {tok: i for i, tok in enumerate(self.vocab)}
        specials = {s: len(self.vocab) + k for k, s in enumerate(special_tokens)}
        if len(specials) != len(special_tokens) or any(not s for s in specials):
            raise UserError("special tokens must be distinct, non-empty strings")
        self._enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=self.ranks, special_tokens=specials,
                                      explicit_n_vocab=len(self.vocab) + len(specials))

    def with_special_tokens(self, names: list[str]) -> BPETokenizer:
        """This tokenizer with `names` added as special tokens after the ones it has (which keep their ids)."""
        have = list(self.special_tokens_in_order)
        return BPETokenizer(self.vocab, self.merges, self.pattern, have + [n for n in names if n not in have])

    @property
    def special_tokens_in_order(self) -> list[str]:
        specials = self.special_tokens
        return sorted(specials, key=specials.get)

    # ---- the reference encoder: what tiktoken computes, spelled out ------------------------------------

    def _merge_chunk(self, piece: bytes) -> list[int]:
        whole = self.ranks.get(piece)
        if whole is not None:  # tiktoken's shortcut: a chunk that is a token is that token
            return [whole]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, best_rank = -1, len(self.ranks)
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and rank < best_rank:  # strict: the leftmost of equal ranks wins
                    best, best_rank = i, rank
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [self.ranks[p] for p in parts]

    def reference_encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Pure-Python encode: regex pre-split, then lowest-rank merges per chunk. Slow; the definition."""
        text = _no_surrogates(text)
        specials = self.special_tokens
        allowed = sorted(self._allowed(allowed_special), key=len, reverse=True) if allowed_special else []
        segments = re.split("(" + "|".join(map(re.escape, allowed)) + ")", text) if allowed else [text]
        split = compile_pattern(self.pattern)
        ids: list[int] = []
        for k, seg in enumerate(segments):
            if k % 2:  # odd segments are the captured special tokens
                ids.append(specials[seg])
                continue
            for chunk in split.findall(seg):
                ids.extend(self._merge_chunk(chunk.encode("utf-8")))
        return ids

    # ---- JSON ------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": FORMAT,
            "pattern": self.pattern,
            "vocab": [base64.b64encode(t).decode("ascii") for t in self.vocab],
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BPETokenizer:
        if obj.get("format") != FORMAT:
            raise CheckpointError(f"BPE tokenizer JSON has format {obj.get('format')!r}; this version reads {FORMAT}")
        try:
            vocab = [base64.b64decode(s, validate=True) for s in obj["vocab"]]
            merges = [(int(a), int(b)) for a, b in obj["merges"]]
            pattern = obj["pattern"]
            compile_pattern(pattern)
            specials = obj.get("special_tokens", {})
            names = sorted(specials, key=lambda s: specials[s])
            if [specials[s] for s in names] != list(range(len(vocab), len(vocab) + len(names))):
                raise ValueError("special ids must follow the vocabulary")
            return cls(vocab, merges, pattern, names)
        except (KeyError, TypeError, ValueError, binascii.Error, re.error, UserError) as e:
            raise CheckpointError(f"BPE tokenizer JSON is damaged: {e}") from None


def _no_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # the same repair tiktoken applies before encoding
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_vocab(vocab: list[bytes], merges: list[tuple[int, int]]) -> None:
    """Raise ValueError unless vocab is the 256 bytes then one token per merge, all distinct."""
    if len(vocab) < 256 or any(vocab[i] != bytes([i]) for i in range(256)):
        raise ValueError("the first 256 tokens must be the single bytes 0..255 in order")
    if len(merges) != len(vocab) - 256:
        raise ValueError(f"{len(merges)} merges for {len(vocab) - 256} merged tokens")
    for i, (a, b) in enumerate(merges, start=256):
        if not (0 <= a < i and 0 <= b < i) or vocab[i] != vocab[a] + vocab[b]:
            raise ValueError(f"token {i} is not the merge of tokens {a} and {b}")
    if len(set(vocab)) != len(vocab):
        raise ValueError("two tokens have the same bytes")

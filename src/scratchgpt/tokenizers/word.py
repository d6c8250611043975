"""Word-level tokenizer: every distinct word of the corpus is one token, anything unseen is `<unk>`.

Owns `WordTokenizer`. "Words" are the chunks of GPT-2's pre-split pattern (`pretokenize.py`): a word carries
its leading space (" the" and "the" are two tokens), punctuation runs and whitespace runs are tokens too, so
`decode(encode(s)) == s` whenever every chunk of s is in the vocabulary. It is BPE's pre-split with no merges
below it: short sequences, a huge vocabulary, and no way to spell a word it has not seen (the lecture's
trade-off). Id 0 is `<unk>`; the rest are ordered by frequency (ties alphabetical), capped by max_vocab.
Does not read files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..errors import CheckpointError, UserError
from .base import Tokenizer
from .pretokenize import SPLIT_PATTERNS, compile_pattern

UNK = "<unk>"


class WordTokenizer(Tokenizer):
    kind = "word"

    def __init__(self, words: list[str]):
        if len(set(words)) != len(words) or UNK in words or any(not isinstance(w, str) or not w for w in words):
            raise ValueError("words must be distinct non-empty strings, without <unk>")
        self.words = [UNK, *words]
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.pattern = SPLIT_PATTERNS["gpt2"]  # what a word is: a chunk of GPT-2's split
        self._split = compile_pattern(self.pattern)

    @classmethod
    def from_text(cls, text: str, max_vocab: int | None = None) -> WordTokenizer:
        """Vocabulary of text's chunks, most frequent first; max_vocab counts <unk> too."""
        if max_vocab is not None and max_vocab < 2:
            raise UserError(f"a word vocabulary needs at least 2 tokens (<unk> and one word), got {max_vocab}")
        counts = Counter(compile_pattern(SPLIT_PATTERNS["gpt2"]).findall(text))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(ranked[: max_vocab - 1] if max_vocab else ranked)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(w, 0) for w in self._split.findall(text)]

    def encode_array(self, text: str) -> np.ndarray:
        get = self.stoi.get
        return np.fromiter((get(w, 0) for w in self._split.findall(text)), dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise UserError(f"a token id in {ids[:8]} is not in this vocabulary of {self.vocab_size}")
        return "".join(self.words[i] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": self.words[1:]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WordTokenizer:
        words = obj.get("words")
        try:
            if not isinstance(words, list):
                raise ValueError("no 'words' list")
            return cls(words)
        except ValueError as e:
            raise CheckpointError(f"word tokenizer JSON is damaged: {e}") from None

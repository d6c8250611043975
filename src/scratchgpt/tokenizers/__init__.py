"""Tokenizers: char, word, our byte-level BPE, OpenAI's GPT-2 and SentencePiece, behind one interface.

The kinds, one module each: char (`char.py`), word (`word.py`), our byte-level BPE (`bpe.py`, trained by
`bpe_train.py`), OpenAI's GPT-2 (`gpt2.py`), SentencePiece (`spm.py`). The interface every kind follows is
`base.py` (the `Tokenizer` base class); the registry and loading from JSON are `registry.py`; building one from
a name, a corpus or a directory is `resolve.py`. This module only gathers them. Does not read corpora from disk.
"""

from __future__ import annotations

from .base import Tokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .gpt2 import GPT2Tokenizer
from .registry import KINDS, tokenizer_from_json
from .resolve import build_tokenizer, get_tokenizer, load_tokenizer_dir
from .spm import SentencePieceTokenizer
from .word import WordTokenizer

__all__ = [
    "KINDS", "BPETokenizer", "CharTokenizer", "GPT2Tokenizer", "SentencePieceTokenizer", "Tokenizer", "WordTokenizer",
    "build_tokenizer", "get_tokenizer", "load_tokenizer_dir", "tokenizer_from_json",
]

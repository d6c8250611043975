"""Turning a `--tokenizer` argument into a tokenizer: a kind's name, or a directory that holds one.

Owns `build_tokenizer` (what `prepare text` uses: char, word, bpe and spm are learned from the text itself,
gpt2 is loaded, a directory is read), `load_tokenizer_dir` (a directory written by `scratchgpt tokenizer
train`, a run directory, a prepared data directory, or a folder of GPT-2 files) and `get_tokenizer` (the
names that need no corpus). Does not own any tokenizer's algorithm or JSON form.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError, UserError, closest
from .base import Tokenizer
from .bpe_train import TOKENIZER_FILE, train_bpe
from .char import CharTokenizer
from .gpt2 import load_gpt2
from .registry import KINDS, tokenizer_from_json
from .spm import SentencePieceTokenizer
from .word import WordTokenizer

DEFAULT_VOCAB_SIZE = 4096  # for bpe and spm learned during `prepare text`
LEARNED = ("char", "word", "bpe", "spm")


def load_tokenizer_dir(path: str | Path) -> Tokenizer:
    """The tokenizer a directory holds; anything else is a DataError saying what the directory lacks."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"tokenizer directory '{p}' does not exist" if not p.exists() else
                        f"'{p}' is a file, not a tokenizer directory; pass the directory `scratchgpt tokenizer train` wrote")
    for name in (TOKENIZER_FILE, "meta.json"):
        file = p / name
        if not file.is_file():
            continue
        try:
            obj = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            raise DataError(f"'{file}' is not readable JSON, so '{p}' is not a usable tokenizer directory") from None
        if name == "meta.json":
            obj = obj.get("tokenizer") if isinstance(obj, dict) else None
        try:
            return tokenizer_from_json(obj)
        except UserError as e:
            raise DataError(f"'{file}' does not hold a usable tokenizer: {e}") from None
    if any((p / n).is_file() for n in ("encoder.json", "vocab.json", "gpt2.tiktoken")):
        return load_gpt2(p)
    raise DataError(f"'{p}' is not a tokenizer directory: it holds no {TOKENIZER_FILE} "
                    "(make one with `scratchgpt tokenizer train --input FILE --vocab-size N --out DIR`)")


def _unknown(spec: str) -> DataError:
    return DataError(f"tokenizer '{spec}' is neither one of {', '.join(KINDS)} nor an existing directory holding "
                     f"{TOKENIZER_FILE}{closest(spec, KINDS)}")


def get_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer that needs no corpus: gpt2, or a directory; learned kinds say how to make one."""
    if spec == "gpt2":
        return load_gpt2()
    if spec in LEARNED:
        raise DataError(f"tokenizer '{spec}' is learned from a corpus: train one with `scratchgpt tokenizer train` "
                        "and pass its directory")
    if Path(spec).exists():
        return load_tokenizer_dir(spec)
    raise _unknown(spec)


def build_tokenizer(spec: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    """char | word | bpe | spm (learned from text; vocab_size caps word, sets bpe and spm) | gpt2 | DIR."""
    if vocab_size is not None and vocab_size < 1:
        raise DataError(f"vocabulary size must be positive, got {vocab_size}")
    if spec == "char":
        return CharTokenizer.from_text(text)
    if spec == "word":
        return WordTokenizer.from_text(text, vocab_size)
    if spec == "bpe":
        return train_bpe([text], vocab_size or DEFAULT_VOCAB_SIZE)
    if spec == "spm":
        return SentencePieceTokenizer.train([text], vocab_size or DEFAULT_VOCAB_SIZE)
    return get_tokenizer(spec)

"""OpenAI's GPT-2 encoding (50,257 tokens) through tiktoken, from a local copy when there is no network.

Owns `GPT2Tokenizer` and `load_gpt2`. Where the ranks come from, first found wins:
  1. a path passed in, or `$SCRATCHGPT_TIKTOKEN_GPT2`: a `.tiktoken` file (lines "base64-token rank"), an
     `encoder.json` (OpenAI's) or `vocab.json` (Hugging Face's GPT-2 folder), or a folder holding one of them;
  2. `tiktoken.get_encoding("gpt2")`, which reads tiktoken's cache (`$TIKTOKEN_CACHE_DIR`) or downloads.
Offline with neither, loading fails with one sentence naming what to set. tokenizer.json records the local
path it came from and the vocabulary size, so sampling a run finds the same file again (or the variable).

The ranks of GPT-2 are the ids in encoder.json (tiktoken checks that they agree with vocab.bpe's merge order),
so encoder.json alone is enough; its keys are bytes spelled with GPT-2's byte-to-character table.
Does not own the encoding algorithm (tiktoken) nor the shared encode/decode surface (`bpe.TiktokenTokenizer`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken

from ..errors import CheckpointError, UserError
from .bpe import ENDOFTEXT, TiktokenTokenizer

GPT2_ENV = "SCRATCHGPT_TIKTOKEN_GPT2"
GPT2_N_VOCAB = 50257
# tiktoken's r50k pattern, as OpenAI wrote it (GPT-2's own encoding is not ours to pin).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_LOCAL_NAMES = ("gpt2.tiktoken", "encoder.json", "vocab.json")


def _offline_error(detail: str = "") -> UserError:
    return UserError(
        f"could not load OpenAI's GPT-2 encoding{detail}: tiktoken cannot download it here (no network?), so set "
        f"{GPT2_ENV} to a local gpt2.tiktoken, encoder.json or Hugging Face vocab.json (or a folder holding one), "
        "or TIKTOKEN_CACHE_DIR to a tiktoken cache that has it"
    )


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, so encoder.json / vocab.json can hold any bytes:
    printable bytes other than space stand for themselves, the rest shift to chr(256 + n) in byte order."""
    visible = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in visible:
            table[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items(), key=lambda kv: ord(kv[1])))  # printable first, as GPT-2 lists them


def _byte_decoder() -> dict[str, int]:
    """GPT-2's table from printable characters back to the bytes they stand for in encoder.json."""
    return {c: b for b, c in bytes_to_unicode().items()}


def _ranks_from_file(path: Path) -> dict[bytes, int]:
    """Ranks from a .tiktoken file or an encoder.json / vocab.json; a bad file is a UserError naming it."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".json":
            table = _byte_decoder()
            ranks = {bytes(table[ch] for ch in key): int(rank) for key, rank in json.loads(raw).items()
                     if key not in (ENDOFTEXT, "<|startoftext|>")}
        else:
            ranks = {}
            for line in raw.splitlines():
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
    except OSError as e:
        raise UserError(f"cannot read the GPT-2 file '{path}': {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise UserError(f"'{path}' is not a GPT-2 encoding (.tiktoken lines, encoder.json or vocab.json)") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) < 256:
        raise UserError(f"'{path}' is not a GPT-2 encoding: its token ids are not 0..{len(ranks) - 1}")
    return ranks


def _local_file(path: Path) -> Path:
    if path.is_dir():
        found = next((path / n for n in _LOCAL_NAMES if (path / n).is_file()), None)
        if found is None:
            raise UserError(f"folder '{path}' holds none of {', '.join(_LOCAL_NAMES)}, so it is not a GPT-2 encoding")
        return found
    if not path.is_file():
        raise UserError(f"GPT-2 encoding file '{path}' not found")
    return path


class GPT2Tokenizer(TiktokenTokenizer):
    """OpenAI's GPT-2 encoding; `extra_special` are special tokens added after its <|endoftext|> (a chat
    template's), with ids 50257, 50258, ..."""

    kind = "gpt2"

    def __init__(self, enc: tiktoken.Encoding, source: str, extra_special: list[str] | tuple[str, ...] = ()):
        self.source, self.extra_special = source, list(extra_special)
        self._base = enc  # the encoding without the extra special tokens
        if self.extra_special:
            base = enc.n_vocab
            specials = {**enc._special_tokens, **{s: base + i for i, s in enumerate(self.extra_special)}}
            enc = tiktoken.Encoding(f"{enc.name}+chat", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                                    special_tokens=specials)
        self._enc = enc

    def with_special_tokens(self, names: list[str]) -> GPT2Tokenizer:
        """This tokenizer with `names` added as special tokens (those it has already keep their ids)."""
        have = set(self._enc.special_tokens_set)
        return GPT2Tokenizer(self._base, self.source, self.extra_special + [n for n in names if n not in have])

    def to_json(self) -> dict[str, Any]:
        obj = {"kind": self.kind, "n_vocab": self.vocab_size, "source": self.source}
        if self.extra_special:
            obj["extra_special_tokens"] = list(self.extra_special)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GPT2Tokenizer:
        source = obj.get("source")
        recorded = source if isinstance(source, str) and source != "tiktoken" and Path(source).exists() else None
        tok = load_gpt2(recorded)
        extra = obj.get("extra_special_tokens", [])
        if extra:
            if not isinstance(extra, list) or not all(isinstance(s, str) and s for s in extra):
                raise CheckpointError("GPT-2 tokenizer JSON has damaged extra_special_tokens")
            tok = GPT2Tokenizer(tok._enc, tok.source, extra)
        if tok.vocab_size != obj.get("n_vocab", tok.vocab_size):
            raise CheckpointError(
                f"the GPT-2 encoding found ({tok.source}) has {tok.vocab_size} tokens but this run was made with "
                f"{obj.get('n_vocab')}; point {GPT2_ENV} at the file it was made with"
            )
        return tok


def load_gpt2(path: str | Path | None = None) -> GPT2Tokenizer:
    """GPT-2 from path, else $SCRATCHGPT_TIKTOKEN_GPT2, else tiktoken (its cache or a download)."""
    src = path or os.environ.get(GPT2_ENV)
    if src:
        file = _local_file(Path(src))
        ranks = _ranks_from_file(file)
        enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={ENDOFTEXT: len(ranks)})
        return GPT2Tokenizer(enc, str(file.resolve()))
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception:  # requests' connection errors, a hash mismatch, an unwritable cache: all mean "not here"
        raise _offline_error() from None
    return GPT2Tokenizer(enc, "tiktoken")

"""Byte-level BPE tokenizers to and from Hugging Face's GPT-2 files (vocab.json + merges.txt).

Owns turning tiktoken-style merge ranks
(`{token bytes: id}`) into vocab.json / merges.txt and back, recognising GPT-2's own vocabulary in a
Hugging Face directory, and finding the ranks behind one of our tokenizers for export. Does not own the
tokenizers themselves (`tokenizers/`, where `gpt2.bytes_to_unicode` holds the byte <-> printable-character table GPT-2's files
use) or the weights (`interop/hf.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tiktoken

from ..tokenizers.gpt2 import bytes_to_unicode

# GPT-2's pre-tokenizer, the one Hugging Face's GPT2Tokenizer always applies: a tokenizer with another
# pattern would split text differently there, so export refuses it rather than write wrong files
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_PATTERNS = frozenset({  # spellings of that one split: GPT-2's original, ours, tiktoken's r50k
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    GPT2_PATTERN,
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
})
EOT = "<|endoftext|>"


def _to_text(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _to_bytes(text: str) -> bytes:
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inverse[c] for c in text)


def _split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE on token's bytes with merges ranked below max_rank only: the last step's two halves remain."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def ranks_to_hf(ranks: dict[bytes, int], special: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """vocab.json's mapping and merges.txt's lines (in merge order) for tiktoken-style ranks."""
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("a byte-level BPE needs all 256 single bytes in its vocabulary")
    vocab = {_to_text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _split(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} is not the merge of two earlier tokens")
        merges.append(f"{_to_text(parts[0])} {_to_text(parts[1])}")
    vocab.update(special)
    return vocab, merges


def hf_to_ranks(vocab: dict[str, int], special: set[str] = frozenset({EOT})) -> dict[bytes, int]:
    """Tiktoken-style ranks from a vocab.json mapping (special tokens left out)."""
    return {_to_bytes(text): rank for text, rank in vocab.items() if text not in special}


def read_hf_vocab(directory: Path) -> tuple[dict[str, int], list[str]] | None:
    """vocab.json and merges.txt of a Hugging Face directory, or None when either is absent or unreadable."""
    try:
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return None
    if not isinstance(vocab, dict):
        return None
    merges = [line for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def is_gpt2_vocab(vocab: dict[str, int], merges: list[str]) -> bool:
    """True for GPT-2's own vocabulary (shared by gpt2, -medium, -large and -xl): 50,257 ids, 50,000 merges."""
    return (len(vocab) == 50257 and len(merges) == 50000 and vocab.get(EOT) == 50256
            and vocab.get("!") == 0 and vocab.get("Ġthe") == 262 and merges[0] == "Ġ t")


def find_ranks(tokenizer: Any) -> tuple[dict[bytes, int], dict[str, int], str] | None:
    """(ranks, special tokens, pattern) of a tokenizer built on a tiktoken Encoding, else None."""
    encodings = [v for v in vars(tokenizer).values() if isinstance(v, tiktoken.Encoding)]
    if not encodings:
        get = getattr(tokenizer, "encoding", None)
        encodings = [get] if isinstance(get, tiktoken.Encoding) else []
    if not encodings:
        return None
    enc = encodings[0]
    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    special = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
    return ranks, special, getattr(enc, "_pat_str", "")


def hf_tokenizer_files(tokenizer: Any, model_max_length: int) -> tuple[dict[str, str] | None, str]:
    """Files that let transformers' AutoTokenizer load our tokenizer, and a sentence saying what was written."""
    if tokenizer is None:
        return None, "no tokenizer was written (the run has no tokenizer.json)"
    found = find_ranks(tokenizer)
    kind = getattr(tokenizer, "kind", type(tokenizer).__name__)
    if found is None:
        return None, f"no Hugging Face tokenizer was written: the run's {kind!r} tokenizer has no GPT-2 BPE form"
    ranks, special, pattern = found
    if pattern not in GPT2_PATTERNS:
        return None, f"no Hugging Face tokenizer was written: the {kind!r} tokenizer splits text unlike GPT-2"
    try:
        vocab, merges = ranks_to_hf(ranks, special)
    except ValueError as e:
        return None, f"no Hugging Face tokenizer was written: {e}"
    eot = EOT if EOT in special else None
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
            "bos_token": eot, "eos_token": eot, "unk_token": eot,
        }, indent=2),
        "special_tokens_map.json": json.dumps({"bos_token": eot, "eos_token": eot, "unk_token": eot}, indent=2),
    }
    return files, f"wrote the {kind!r} tokenizer as vocab.json and merges.txt"

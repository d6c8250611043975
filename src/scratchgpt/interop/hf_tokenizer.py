"""Our tokenizers as Hugging Face tokenizer files, and GPT-2's vocab.json + merges.txt read back.

Owns turning tiktoken-style merge ranks (`{token bytes: id}`) into vocab.json / merges.txt and back,
recognising GPT-2's own vocabulary in a Hugging Face directory, naming a split regex by what it splits
(`split_name`: GPT-2's or GPT-4's, however spelled), and `hf_tokenizer_files`, what `export --format hf`
writes for each kind of tokenizer so that `transformers.AutoTokenizer.from_pretrained(dir)` gives our ids:

  bpe, gpt2  tokenizer.json: byte-level BPE whose pre-tokenizer is the tokenizer's own split regex (a `Split`,
             then `ByteLevel` without its regex), so the fast tokenizer splits exactly as tiktoken does, and
             `ignore_merges` (a chunk that is a whole token is that token: tiktoken's shortcut); special tokens
             are added tokens. When the split is GPT-2's, also vocab.json + merges.txt for GPT2Tokenizer.
  char       tokenizer.json: a WordLevel vocabulary of the characters after a split into single characters
             (an unknown character is an error there too), joined back by a `Fuse` decoder.
  word       tokenizer.json: WordLevel over the chunks of GPT-2's split, `<unk>` (id 0) for unseen ones.
  spm        no tokenizer.json (see `SPM_NOTE`); its model is written as sentencepiece.model.

tokenizer_config.json names `PreTrainedTokenizerFast`, which loads tokenizer.json as written (transformers 5's
GPT2Tokenizer would rebuild GPT-2's own pre-tokenizer over it). Does not own the tokenizers themselves
(`tokenizers/`, where `gpt2.bytes_to_unicode` holds the byte <-> printable-character table GPT-2's files use)
or the weights (`interop/hf.py`). Imports neither transformers nor tokenizers: the files are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenizers.base import Tokenizer
from ..tokenizers.bpe import TiktokenTokenizer
from ..tokenizers.gpt2 import bytes_to_unicode
from ..tokenizers.pretokenize import SPLIT_PATTERNS

# GPT-2's pre-tokenizer, the one Hugging Face's GPT2Tokenizer always applies: a tokenizer with another
# pattern would split text differently there, so export refuses it rather than write wrong files
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_PATTERNS = frozenset({  # spellings of that one split: GPT-2's original, ours, tiktoken's r50k
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    GPT2_PATTERN,
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
})
EOT = "<|endoftext|>"
UNK = "<unk>"  # the word tokenizer's id 0; for char, a name absent from its vocabulary (so unknown is an error)
SPM_NOTE = ("the 'spm' tokenizer was written only as sentencepiece.model (load it with sentencepiece): "
            "SentencePiece splits by Unicode script, whitespace and digits and merges by piece score inside its own "
            "library, which no tokenizer.json reproduces exactly, so transformers gets no tokenizer")


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


def find_ranks(tokenizer: Tokenizer) -> tuple[dict[bytes, int], dict[str, int], str] | None:
    """(ranks, special tokens, pattern) of a tokenizer built on a tiktoken Encoding, else None."""
    if not isinstance(tokenizer, TiktokenTokenizer):
        return None
    enc = tokenizer.encoding
    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    special = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
    return ranks, special, enc._pat_str


def split_name(pattern: str) -> str | None:
    """'gpt2' or 'gpt4' for a spelling of GPT-2's or GPT-4's split we know (our pinned ones, OpenAI's,
    tiktoken's), else None. Compared by name, not spelling: ours spell the Unicode classes out."""
    if pattern in GPT2_PATTERNS or pattern == SPLIT_PATTERNS["gpt2"]:
        return "gpt2"
    if pattern == SPLIT_PATTERNS["gpt4"]:
        return "gpt4"
    return None


def _split_by(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _tokenizer_json(model: dict[str, Any], pre_tokenizer: dict[str, Any], decoder: dict[str, Any],
                    special: dict[str, int] | None = None) -> str:
    """tokenizer.json of the `tokenizers` library: no normalizer, no post-processor (nothing is added)."""
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in sorted((special or {}).items(), key=lambda kv: kv[1])]
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                       "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
                       "decoder": decoder, "model": model}, ensure_ascii=False)


def _config_files(model_max_length: int, eot: str | None = None) -> dict[str, str | bytes]:
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                              "clean_up_tokenization_spaces": False}
    files: dict[str, str | bytes] = {}
    if eot is not None:  # GPT-2's convention: one token begins, ends and stands in for the unknown
        config.update(bos_token=eot, eos_token=eot, unk_token=eot)
        files["special_tokens_map.json"] = json.dumps({"bos_token": eot, "eos_token": eot, "unk_token": eot}, indent=2)
    files["tokenizer_config.json"] = json.dumps(config, indent=2)
    return files


def _byte_level_files(tokenizer: Any, kind: str, model_max_length: int) -> tuple[dict[str, str | bytes] | None, str]:
    found = find_ranks(tokenizer)
    if found is None:
        return None, f"no Hugging Face tokenizer was written: the run's {kind!r} tokenizer has no byte-level BPE form"
    ranks, special, pattern = found
    try:
        vocab, merges = ranks_to_hf(ranks, special)
    except ValueError as e:
        return None, f"no Hugging Face tokenizer was written: {e}"
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
             "vocab": vocab, "merges": merges}
    pre = {"type": "Sequence", "pretokenizers": [
        _split_by(pattern), {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    files = {"tokenizer.json": _tokenizer_json(model, pre, decoder, special),
             **_config_files(model_max_length, EOT if EOT in special else None)}
    name = split_name(pattern)
    if name == "gpt2":
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False)
        files["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
        return files, (f"wrote the {kind!r} tokenizer as tokenizer.json, and as vocab.json and merges.txt for "
                       "GPT2Tokenizer (its split is GPT-2's)")
    if name == "gpt4":
        return files, (f"wrote the {kind!r} tokenizer as tokenizer.json with its GPT-4 split as the pre-tokenizer "
                       "(no vocab.json/merges.txt: GPT2Tokenizer would split with GPT-2's regex)")
    return files, (f"wrote the {kind!r} tokenizer as tokenizer.json with its own split regex as the pre-tokenizer "
                   "(a regex we do not know: check that Hugging Face's engine splits your text alike)")


def hf_tokenizer_files(tokenizer: Tokenizer | None, model_max_length: int) -> tuple[dict[str, str | bytes] | None, str]:
    """Files that let transformers' AutoTokenizer load our tokenizer (name -> text or bytes), or None, and a
    sentence saying what was written and, for what could not be, why."""
    if tokenizer is None:
        return None, "no tokenizer was written (the run has no tokenizer.json)"
    kind = tokenizer.kind
    fuse = {"type": "Fuse"}  # tokens joined as they are (the library's default joins them with spaces)
    if kind == "char":
        model = {"type": "WordLevel", "vocab": {c: i for i, c in enumerate(tokenizer.chars)}, "unk_token": UNK}
        special = tokenizer.special_tokens  # a chat template's, after the characters
        files = {"tokenizer.json": _tokenizer_json(model, _split_by(r"[\s\S]"), fuse, special),
                 **_config_files(model_max_length)}
        return files, ("wrote the 'char' tokenizer as tokenizer.json (one token per character"
                       + (f", and {len(special)} special tokens)" if special else ")"))
    if kind == "word":
        model = {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(tokenizer.words)}, "unk_token": UNK}
        files = {"tokenizer.json": _tokenizer_json(model, _split_by(tokenizer.pattern), fuse),
                 **_config_files(model_max_length)}
        return files, "wrote the 'word' tokenizer as tokenizer.json (GPT-2's split, <unk> for unseen words)"
    if kind == "spm":
        return {"sentencepiece.model": tokenizer.model_proto}, SPM_NOTE
    return _byte_level_files(tokenizer, kind, model_max_length)

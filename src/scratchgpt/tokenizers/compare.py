"""The lecture's tokenizer trade-off, measured: vocabulary size against sequence length on one text.

Owns `compare_tokenizers` (the rows) and `format_table` (what `scratchgpt tokenizer compare` prints). Char,
word, our BPE and SentencePiece are learned from the text itself (the BPE and SentencePiece at the vocabulary
size asked for); GPT-2 is OpenAI's fixed encoding, and its row says why when it cannot be loaded here.
Does not read files (the caller passes the text).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .bpe_train import train_bpe
from .char import CharTokenizer
from .gpt2 import load_gpt2
from .spm import SentencePieceTokenizer
from .word import WordTokenizer


@dataclass
class Row:
    name: str
    chars: int
    vocab_size: int | None = None
    tokens: int | None = None
    round_trip: bool | None = None
    note: str = ""  # why the row is empty

    @property
    def chars_per_token(self) -> float | None:
        return self.chars / self.tokens if self.tokens else None


def compare_tokenizers(text: str, vocab_size: int = 4096) -> list[Row]:
    """One row per tokenizer: vocabulary size, tokens the text becomes, whether decode gives the text back."""
    makers = [
        ("char", lambda: CharTokenizer.from_text(text)),
        ("word", lambda: WordTokenizer.from_text(text)),
        (f"bpe (ours, {vocab_size})", lambda: train_bpe([text], vocab_size)),
        (f"sentencepiece ({vocab_size})", lambda: SentencePieceTokenizer.train([text], vocab_size)),
        ("gpt2 (tiktoken)", load_gpt2),
    ]
    rows = []
    for name, make in makers:
        try:
            tok = make()
        except UserError as e:  # gpt2 offline, sentencepiece missing: the row says so, the others still count
            rows.append(Row(name, len(text), note=str(e)))
            continue
        ids = tok.encode(text)
        rows.append(Row(name, len(text), tok.vocab_size, len(ids), tok.decode(ids) == text))
    return rows


def format_table(rows: list[Row], n_chars: int) -> str:
    lines = [f"{n_chars:,} characters", "",
             f"{'tokenizer':<24} {'vocab':>8} {'tokens':>11} {'chars/token':>12} {'round trip':>11}"]
    notes = []
    for r in rows:
        if r.tokens is None:
            lines.append(f"{r.name:<24} {'-':>8} {'-':>11} {'-':>12} {'-':>11}")
            notes.append(f"{r.name}: {r.note}")
        else:
            lines.append(f"{r.name:<24} {r.vocab_size:>8,} {r.tokens:>11,} {r.chars_per_token:>12.2f} "
                         f"{'exact' if r.round_trip else 'lossy':>11}")
    return "\n".join(lines + ([""] + notes if notes else []))

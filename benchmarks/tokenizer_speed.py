"""Tokenizer speed on tiny Shakespeare: BPE training time, and encoding throughput on one core.

    python benchmarks/tokenizer_speed.py [--input PATH] [--vocab-size 4096] [--repeats 5]

The corpus is --input, else $SCRATCHGPT_TINYSHAKESPEARE, else ../shared/data/tinyshakespeare/input.txt.
Bars (issue 3): training a 4,096-token vocabulary in <= 30 s on 2 cores; encoding >= 5 MB/s per core.
Training is single-threaded Python; encoding is one call on the calling thread (tiktoken, no batch threads).
Each figure is the best of --repeats runs, as wall-clock seconds and as CPU seconds of this process (the
CPU figure is what one core does when other processes share the machine). The load average before and after
is printed so a shared machine shows. Prints one table last. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from common import best_of, corpus_path

from scratchgpt.errors import UserError
from scratchgpt.tokenizers import CharTokenizer, WordTokenizer
from scratchgpt.tokenizers.bpe_train import train_bpe
from scratchgpt.tokenizers.gpt2 import load_gpt2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="corpus (default: tiny Shakespeare)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5, help="runs of each encoding; training runs max(1, repeats // 2)")
    args = p.parse_args(argv)
    try:
        text = corpus_path(args.input).read_text(encoding="utf-8")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mb = len(text.encode("utf-8")) / 1e6
    load_before = os.getloadavg()
    rows: list[tuple[str, str, str, str]] = []

    tok = None
    for pattern in ("gpt4", "gpt2"):
        wall, cpu, t = best_of(lambda pattern=pattern: train_bpe([text], args.vocab_size, pattern=pattern),
                               max(1, args.repeats // 2))
        tok = tok or t
        rows.append((f"train bpe {args.vocab_size} ({pattern} split)", f"{wall:.2f} s", f"{cpu:.2f} s", "<= 30 s"))
        print(f"trained {pattern}: {wall:.2f} s", file=sys.stderr)

    encoders: list[tuple[str, Callable[[], Any]]] = [
        ("encode bpe (tiktoken, list)", lambda: tok.encode(text)),
        ("encode bpe (tiktoken, array)", lambda: tok.encode_array(text)),
    ]
    try:
        gpt2 = load_gpt2()
        encoders.append(("encode gpt2 (tiktoken, list)", lambda: gpt2.encode(text)))
    except UserError as e:
        print(f"gpt2 skipped: {e}", file=sys.stderr)
    char, word = CharTokenizer.from_text(text), WordTokenizer.from_text(text)
    encoders += [("encode char (numpy)", lambda: char.encode_array(text)),
                 ("encode word (python dict)", lambda: word.encode_array(text))]
    try:
        from scratchgpt.tokenizers import SentencePieceTokenizer

        spm = SentencePieceTokenizer.train([text], args.vocab_size)
        encoders.append((f"encode sentencepiece {args.vocab_size}", lambda: spm.encode(text)))
    except UserError as e:
        print(f"sentencepiece skipped: {e}", file=sys.stderr)
    for name, fn in encoders:
        wall, cpu, _ = best_of(fn, args.repeats)
        rows.append((name, f"{mb / wall:.1f} MB/s", f"{mb / cpu:.1f} MB/s", ">= 5 MB/s" if "bpe" in name else ""))
    sample = text[:100_000]  # the pure-Python reference encoder is the definition, not the fast path
    wall, cpu, _ = best_of(lambda: tok.reference_encode(sample), 1)
    rows.append(("encode bpe (pure-Python reference)", f"{len(sample.encode()) / 1e6 / wall:.2f} MB/s",
                 f"{len(sample.encode()) / 1e6 / cpu:.2f} MB/s", ""))

    load_after = os.getloadavg()
    print(f"corpus: {mb:.2f} MB; cores: {os.cpu_count()}; load average (1 min) before {load_before[0]:.1f}, "
          f"after {load_after[0]:.1f}")
    print()
    print(f"| {'what':<38} | {'wall':>12} | {'CPU':>12} | {'bar':>9} |")
    print(f"| {'-' * 38} | {'-' * 12}:| {'-' * 12}:| {'-' * 9} |")
    for r in rows:
        print(f"| {r[0]:<38} | {r[1]:>12} | {r[2]:>12} | {r[3]:>9} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

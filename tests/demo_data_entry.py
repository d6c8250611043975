"""A command line over `scratchgpt.chat_demo.make_data` (the chat demo's data step), so tests/test_outputs.py can
walk it through the output-directory rule and kill it mid-write like the other writers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchgpt.chat_demo import make_data
from scratchgpt.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-size", type=int, required=True)
    ap.add_argument("--heldout-words", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        make_data(args.corpus, args.out, args.train_size, args.heldout_words, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0

"""Printing for humans: the one helper every message goes through, silent on all ranks but 0.

Owns `echo` and `is_main_process`. Messages go to stderr (stdout is kept for generated text), through
tqdm's writer so they do not tear a progress bar.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def echo(msg: str) -> None:
    if is_main_process():
        tqdm.write(msg, file=sys.stderr)

"""Printing for humans: the one helper every message goes through and the one every progress display goes
through, both silent on all ranks but 0.

Owns `echo`, `is_main_process` and `progress_bar`. Messages go to stderr (stdout is kept for generated text),
through tqdm's writer so they do not tear a progress bar. A progress display is tqdm's bar on a terminal; when
stderr is not one (`bash scripts/main.sh > log 2>&1`, a batch job's log) it is `LineProgress`: one plain
line per report (the trainer reports at its log steps) or every half minute, never a redraw.
Does not own what is measured (the callers count and name their units).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def echo(msg: str) -> None:
    if is_main_process():
        tqdm.write(msg, file=sys.stderr)


class LineProgress:
    """A progress display for logs, with the part of tqdm's interface the callers use (update, set_postfix,
    n, total, close): a line such as `train:  33% 10/30 [00:01<00:02, 9.52step/s, loss=3.1]` when the caller
    reports (`set_postfix`: printed at the next update, so it counts that step) or `every` seconds have passed,
    and a last one at `close` when it printed any before and something moved since (a job shorter than `every`
    that never reports prints no line: a log keeps only what a person would wait for)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, unit_scale: bool, every: float,
                 file: Any = None):
        self.total, self.desc, self.unit, self.unit_scale, self.every = total, desc, unit, unit_scale, every
        self.file = file or sys.stderr
        self.n = self.initial = self._printed = initial
        self.start = self._last = time.monotonic()
        self.postfix, self._report, self._any = "", False, False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self._report or now - self._last >= self.every:
            self._line(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())
        self._report = True

    def close(self) -> None:
        if self._any and self.n != self._printed:  # a job shorter than `every` that never reports prints nothing
            self._line(time.monotonic())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        shape = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}" if self.total else "{n_fmt}{unit} [{elapsed}"
        line = tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, unit_scale=self.unit_scale,
                                 rate=rate, postfix=self.postfix or None,
                                 bar_format="{desc}: " + shape + ", {rate_fmt}{postfix}]")
        print(line, file=self.file, flush=True)
        self._last, self._printed, self._report, self._any = now, self.n, False, True


ProgressBar = tqdm | LineProgress


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", initial: int = 0, unit_scale: bool = False,
                 enabled: bool = True, every: float = 30.0) -> ProgressBar:
    """The progress display for `total` units of work (None: unknown): tqdm's bar on a terminal, `LineProgress`
    in a log, nothing when not `enabled` or on a rank other than 0."""
    on = enabled and is_main_process()
    if on and not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial, unit_scale, every)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, disable=not on,
                file=sys.stderr, dynamic_ncols=True)

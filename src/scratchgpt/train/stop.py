"""Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, `docker stop`, SLURM, systemd) and SIGHUP.

Owns `StopSignals`: while inside it (all of `train`, set-up included), the first of these signals asks the
loop to save a checkpoint and stop after the current step; a second one stops at once (`StopNow`, a
`KeyboardInterrupt`: it unwinds through every `finally`, so no temp file or staging directory is left).
Does not own saving (`writer.py`) or the exit status (`errors.Interrupted` carries 128 + the signal's
number; the CLI gives `StopNow` the same).
"""

from __future__ import annotations

import signal
import threading

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class StopNow(KeyboardInterrupt):
    """A second signal: stop at once, without saving (the CLI exits with 128 + the signal, as for the first)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}, without saving; the last "
                         "checkpoint is kept")
        self.signum = signum


class StopSignals:
    """`requested` is the number of the first signal received (None until one comes)."""

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            raise StopNow(signum)  # a second signal: stop now, without saving
        self.requested = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

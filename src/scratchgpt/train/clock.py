"""The run's clock: seconds since launch, read alike by every rank.

Owns `Clock`. One process reads its own clock whenever asked. Under torchrun each rank has its own clock
and launch time, and a clock-driven run (`train.time_limit`, `train.schedule_by_time`) must still take the
same lr and stop at the same step on every rank: the ranks use rank 0's reading, broadcast before the
first step and at every log step (when the loop already waits for the ranks), and hold it in between. The
lr schedule then moves on at log steps and a time limit is noticed at the first log step past it.
Does not own what the time means (the schedule is `optim.lr_at`'s, the stop `loop.py`'s).
"""

from __future__ import annotations

import time

import torch

from .. import distributed as D


class Clock:
    """Seconds since `launch`; with many ranks and `shared`, rank 0's seconds, as of the last log step."""

    def __init__(self, launch: float, dist: D.DistContext, device: torch.device, shared: bool):
        self.launch, self.dist, self.device = launch, dist, device
        self.shared = shared and dist.enabled  # without a time limit nobody decides by it: no collective
        self._agreed = self._read()

    def local(self) -> float:
        """This process's own seconds since launch (for what rank 0 alone writes: logs, checkpoints)."""
        return time.time() - self.launch

    def now(self) -> float:
        """Seconds since launch, the same on every rank."""
        return self._agreed if self.shared else self.local()

    def tick(self, log_step: bool) -> None:
        """After each step: at a log step the ranks take rank 0's reading (every rank must call this)."""
        if self.shared and log_step:
            self._agreed = self._read()

    def _read(self) -> float:
        return D.broadcast_float(self.dist, self.local(), self.device) if self.shared else 0.0

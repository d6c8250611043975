"""One training step: micro-steps with gradient accumulation, clipping, the optimizer. `bench` times this.

Owns `Batches` (a loader kept one batch ahead, so the next batch is drawn while the device works, and
whose `state()` is what a checkpoint records) and `train_step`. Does not own the learning-rate schedule
(the caller sets it, `optim.set_lr`), evaluation or checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..runtime import Runtime

Batch = tuple[torch.Tensor, torch.Tensor]  # x, y: (B, T) each


class BatchSource(Protocol):
    def get_batch(self) -> Batch: ...

    def state(self) -> torch.Tensor: ...


class Batches:
    """A batch source one batch ahead. `current` is the batch to train on; `advance()` draws the next.

    `state()` is the source's state before the batch that is drawn but not yet used, so a run resumed from
    a checkpoint draws that batch again and continues exactly.
    """

    def __init__(self, source: BatchSource):
        self.source = source
        self._state = source.state()
        self.current = source.get_batch()

    def advance(self) -> None:
        self._state = self.source.state()
        self.current = self.source.get_batch()

    def state(self) -> torch.Tensor:
        return self._state


def no_grad_sync(last_micro_step: bool) -> contextlib.AbstractContextManager:
    """One process: gradients need no synchronisation."""
    return contextlib.nullcontext()


def train_step(model: nn.Module, forward: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
               t: TrainConfig, rt: Runtime,
               grad_sync: Callable[[bool], contextlib.AbstractContextManager] = no_grad_sync) -> torch.Tensor:
    """One optimizer step over `t.grad_accum_steps` micro-batches; returns the last micro-batch's loss.

    `forward` is the module to call (the model, or its DDP wrapper, possibly compiled); `model` is the plain
    module whose gradients are clipped. `grad_sync(last)` is entered around each micro-step: with DDP it
    skips the all-reduce on all but the last one.
    """
    for micro in range(t.grad_accum_steps):
        with grad_sync(micro == t.grad_accum_steps - 1):
            x, y = batches.current
            with rt.autocast():
                _, loss = forward(x, y)
            batches.advance()  # drawn while the device still works on this micro-step
            (loss / t.grad_accum_steps).backward()
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

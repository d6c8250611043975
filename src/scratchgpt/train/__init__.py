"""Training: the loop that is the point of the project, in a few parts a reader can hold.

    run.py          the set-up (config -> model, optimizer, loaders, evaluator; one process or many) and
                    the progress (step, best val loss)
    step.py         one optimizer step: micro-steps, gradient accumulation, clipping, the optimizer
    evaluate.py     the mean loss on train and val
    writer.py       the trainer's writer: the run directory's header, metrics, checkpoints; and resuming
                    (the format they are written in is `checkpoint.py`'s, outside this package)
    ownership.py    who may write into a run directory (--force), and what a resume may change
    stop.py         SIGINT / SIGTERM / SIGHUP: save and stop after the current step
    clock.py        seconds since launch, the same on every rank (rank 0's, shared at log steps)
    loop.py         `train`: the loop, top to bottom, and every decision in it (log, evaluate, best, save, stop)

Many processes (`torchrun --nproc_per_node N -m scratchgpt.cli train ...`): `train.batch_size` is the
global batch per micro-step, split evenly over the ranks (a world size that does not divide it is an
error), so a recipe means the same run on any number of processes. Every rank draws the same global
batch from the same seeded stream and keeps its own rows; gradients are all-reduced by DDP on the last
micro-step only; logged and evaluated losses are the means over all ranks; rank 0 alone writes the run
directory while the others wait at a barrier. A checkpoint holds the data stream's state (the same on
every rank) and each rank's torch RNG state (dropout); resuming on a different world size keeps the data
stream exactly, restores the RNG of the ranks that exist in both, and seeds new ranks from
(seed, rank, step). The ranks follow rank 0's clock (`clock.py`: shared at log steps), so a time limit and
train.schedule_by_time's lr are the same on every rank; a signal to any rank stops all at the next log step. With train.fsdp the
model is sharded instead (`fsdp.py`); checkpoints are gathered into the same unsharded files.

The optimizers and schedule live in `optim.py`, the process group in `distributed.py`, devices and dtypes
in `runtime.py`. Nothing that samples or serves imports this package.
"""

from __future__ import annotations

from .evaluate import Evaluator
from .loop import TrainResult, train

__all__ = ["Evaluator", "TrainResult", "train"]

"""What training writes to its run directory, and reading it back to resume.

Owns starting the run directory (its header: config.json and tokenizer.json; a fresh or trimmed metrics
log), `MetricsLog` (one JSON line per log or evaluation step), `save` (the last weights, the best weights
when validation improved, then the trainer state and the loss plot) and `restore` (weights, optimizer,
step, best val, every RNG stream and the data position, from the trainer state). On many processes rank 0
writes while the others wait at a barrier. Does not own the file format (`checkpoint.py`) or when to save
(`loop.py`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed as D
from ..fileio import append_text, atomic_write_text
from ..plots import plot_loss, read_metrics
from .run import TrainingRun

METRICS, PLOT = "metrics.jsonl", "loss.png"


class MetricsLog:
    """Appends rows to the run's metrics.jsonl (rank 0 only; the others' rows are the same means)."""

    def __init__(self, run: TrainingRun):
        self.path = run.run_dir / METRICS
        self.enabled = run.dist.is_main

    def write(self, row: dict) -> None:
        if self.enabled:
            append_text(self.path, json.dumps(row) + "\n")  # a refused write: one DiskError sentence


def start_run_dir(run: TrainingRun, resumed: bool) -> None:
    """Create the run directory and write its header; a resumed log loses the lines after the checkpoint
    (so it reads as one continuous run), a fresh run starts a fresh log."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run.run_dir / METRICS
    if run.dist.is_main:
        if resumed:
            _trim_metrics(metrics, run.step)
        elif metrics.exists():
            metrics.unlink()
        ckpt.write_run_header(run.run_dir, run.cfg, run.tokenizer, run.model.num_params())
    D.barrier(run.dist, run.rt.device)  # nobody logs into a file rank 0 is still trimming


def _trim_metrics(path: Path, step: int) -> None:
    if path.is_file():
        rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def restore(run: TrainingRun, run_dir: str | Path) -> None:
    """Continue from run_dir's trainer state: weights, optimizer, step, best val, RNG streams, data position."""
    ckpt.read_config(run_dir)  # a clear error when it is not a run directory
    extra, info = ckpt.load_trainer_state(run_dir, run.model, run.optimizer)
    run.step, run.best_val = int(info["step"]), float(info["best_val"])
    D.restore_rng(extra, run.dist, run.rt.device, run.cfg.train.seed, run.step)
    run.loader.set_state(extra["rng_loader"])  # the global data stream: the same at any world size


def save(run: TrainingRun, eval_losses: dict[str, float] | None, data_state: torch.Tensor, launch: float) -> None:
    """A checkpoint of the run at its current step; every rank must call it (it gathers RNG states).

    `data_state` is the loader's state before the batch drawn but not yet trained on (`Batches.state()`).
    """
    if run.cfg.train.fsdp:
        from .. import fsdp  # imported only for FSDP runs (see run.py)

        weights, opt_state = fsdp.gather_state(run.model, run.optimizer)  # a collective
    else:
        weights, opt_state = run.model, run.optimizer
    main = run.dist.is_main
    if eval_losses is not None and eval_losses["val"] < run.best_val:
        run.best_val = eval_losses["val"]
        if main:
            ckpt.save_weights(run.run_dir / ckpt.MODEL_BEST, weights, run.step)
    extra = {**D.rng_states(run.dist, run.rt.device), "rng_loader": data_state}  # a collective: every rank
    if main:
        ckpt.save_weights(run.run_dir / ckpt.MODEL, weights, run.step)
        ckpt.save_trainer_state(run.run_dir, weights, opt_state, extra, {
            "step": run.step, "best_val": run.best_val, "tokens": run.step * run.tokens_per_step,
            "elapsed": time.time() - launch, "last_eval": eval_losses or {}, "world_size": run.dist.world_size,
        })
        plot_loss(run.run_dir / METRICS, run.run_dir / PLOT, title=run.cfg.name)
    D.barrier(run.dist, run.rt.device)  # the others wait until the checkpoint is whole

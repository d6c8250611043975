"""What training writes to its run directory, and reading it back to resume.

Owns starting the run directory (`start_run_dir`), `MetricsLog` (one JSON line per log or evaluation step),
`save` (the last weights, the best weights when validation improved, the trainer state and the loss plot;
with the first checkpoint also config.json and tokenizer.json) and `restore` (weights, optimizer, step,
best val, every RNG stream and the data position, from the trainer state). On many processes rank 0 writes
while the others wait at a barrier. Does not own the file format (`checkpoint.py`), when to save
(`loop.py`) or who may write where (`ownership.py`).

The run directory is consistent at every instant, so a kill at any moment loses at most the steps since the
last checkpoint:
- a new run writes its metrics from the start, and its first checkpoint's files in the order weights,
  trainer state, plot, tokenizer.json, config.json: until config.json exists the directory holds no run
  (`ownership.py`), and what is there is replaced by the next run into it;
- a run that replaces another (`--force`) writes into a staging directory beside it until its first
  checkpoint is complete there, then swaps it in whole (`fileio.swap_in`): before that instant the old run
  is untouched and loadable, after it the new one is;
- a resumed run never rewrites tokenizer.json, and config.json only (atomically) when a setting a resume may
  change was changed; later checkpoints replace one file at a time, and resuming reads the trainer state
  alone (weights, optimizer and RNG of one step in one file).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed as D
from .. import outputs
from ..fileio import append_text, atomic_write_text, staging_dir, swap_in, writing
from ..plots import plot_loss, read_metrics
from .ownership import RUN_FILES, resumed_config_changed
from .run import TrainingRun

METRICS, PLOT = "metrics.jsonl", "loss.png"


class MetricsLog:
    """Appends rows to the run's metrics.jsonl (rank 0 only; the others' rows are the same means)."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.enabled = run.dist.is_main

    def write(self, row: dict) -> None:
        if self.enabled:  # into the staging directory until a replacing run's first checkpoint
            append_text(self.run.write_dir / METRICS, json.dumps(row) + "\n")  # a refused write: one DiskError


def start_run_dir(run: TrainingRun, resumed_in_place: bool, replaces: bool) -> None:
    """Get the run directory ready for writing. Resumed in place: the log loses the lines after the checkpoint
    (so it reads as one continuous run) and config.json records the settings a resume changed. A new run into
    a directory that holds no run: what a run killed there before its first checkpoint left is removed. A new
    run that replaces another (`replaces`, from `ownership.check_target`): a staging directory beside it."""
    run.header_pending = not resumed_in_place
    if run.dist.is_main:
        if resumed_in_place:
            _trim_metrics(run.run_dir / METRICS, run.step)
            if resumed_config_changed(run.cfg, run.run_dir):
                ckpt.write_run_header(run.run_dir, run.cfg, None, run.n_params)
        elif replaces:
            run.staging = staging_dir(run.run_dir)
        else:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            # no config.json, so no run: what a run killed before its first checkpoint left goes (its weights
            # must never pass for this run's best); tokenizer.json is simply replaced at the first checkpoint
            for name in set(RUN_FILES) - {ckpt.CONFIG, ckpt.TOKENIZER}:
                (run.run_dir / name).unlink(missing_ok=True)
    D.barrier(run.dist, run.rt.device)  # nobody logs into a file rank 0 is still trimming


def drop_staging(run: TrainingRun) -> None:
    """A replacing run that stops before its first checkpoint leaves the old run as it was."""
    if run.staging is not None:
        shutil.rmtree(run.staging, ignore_errors=True)
        run.staging = None


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the rows after the checkpoint (and lines a crash cut or damaged); rewritten only when some go."""
    if path.is_file():
        rows = read_metrics(path)
        kept = [r for r in rows if r.get("step", 0) <= step]
        if len(kept) < len(rows) or len(rows) < len(path.read_bytes().splitlines()):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


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
            ckpt.save_weights(run.write_dir / ckpt.MODEL_BEST, weights, run.step)
    extra = {**D.rng_states(run.dist, run.rt.device), "rng_loader": data_state}  # a collective: every rank
    if main:
        out = run.write_dir
        ckpt.save_weights(out / ckpt.MODEL, weights, run.step)
        ckpt.save_trainer_state(out, weights, opt_state, extra, {
            "step": run.step, "best_val": run.best_val, "tokens": run.step * run.tokens_per_step,
            "elapsed": time.time() - launch, "last_eval": eval_losses or {}, "world_size": run.dist.world_size,
        })
        plot_loss(out / METRICS, out / PLOT, title=run.cfg.name)
        if run.header_pending:  # config.json last: from now on the directory holds this run
            ckpt.write_run_header(out, run.cfg, run.tokenizer, run.n_params)
        if run.staging is not None:
            with writing(run.run_dir, f"the previous run in '{run.run_dir}' is unchanged"):
                swap_in(run.staging, run.run_dir, carry=outputs.RUN.carry)  # the user's files
            run.staging = None
    run.header_pending = False
    D.barrier(run.dist, run.rt.device)  # the others wait until the checkpoint is whole

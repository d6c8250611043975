"""The trainer's writer: what training writes to its run directory, and reading it back to resume.

Owns `RunWriter` (gets the run directory ready, appends the metrics log, writes a checkpoint when the loop
says: the last weights, the best weights when told they are the best, the trainer state and the loss plot;
with the first checkpoint also config.json and tokenizer.json; a replacing run's staging directory) and
`restore` (weights, optimizer, every RNG stream and the data position from the trainer state, and the
`Progress` it records). On many processes rank 0 writes while the others wait at a barrier. Does not own
the file format (`checkpoint.py`, which everything that reads a run uses), when to save or what is best
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
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed as D
from .. import outputs
from ..fileio import append_text, atomic_write_text, staging_dir, swap_in, writing
from ..plots import plot_loss, read_metrics
from .ownership import RUN_FILES, resumed_config_changed
from .run import Progress, Setup

METRICS, PLOT = "metrics.jsonl", "loss.png"


class RunWriter:
    """Rank 0 writes the run directory; every rank calls `save` (it gathers). Made by `start`; `close` leaves
    the previous run as it was when a replacing run stops before its first checkpoint."""

    def __init__(self, run_dir: Path, setup: Setup, header_pending: bool, staging: Path | None = None):
        self.run_dir, self.setup = run_dir, setup
        self.header_pending = header_pending  # config.json and tokenizer.json are written with the first checkpoint
        # until the first checkpoint of a run that replaces another (`train --force`), rank 0 writes into a
        # staging directory beside run_dir, which that checkpoint swaps in whole
        self.staging = staging

    @classmethod
    def start(cls, run_dir: Path, setup: Setup, step: int, resumed_in_place: bool, replaces: bool) -> RunWriter:
        """Get the run directory ready for writing. Resumed in place: the log loses the lines after the
        checkpoint at `step` (so it reads as one continuous run) and config.json records the settings a resume
        changed. A new run into a directory that holds no run: what a run killed there before its first
        checkpoint left is removed. A new run that replaces another (`replaces`, from
        `ownership.check_target`): a staging directory beside it."""
        writer = cls(run_dir, setup, header_pending=not resumed_in_place)
        if setup.dist.is_main:
            if resumed_in_place:
                _trim_metrics(run_dir / METRICS, step)
                if resumed_config_changed(setup.cfg, run_dir):
                    ckpt.write_run_header(run_dir, setup.cfg, None, setup.n_params)
            elif replaces:
                writer.staging = staging_dir(run_dir)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                # no config.json, so no run: what a run killed before its first checkpoint left goes (its weights
                # must never pass for this run's best); tokenizer.json is simply replaced at the first checkpoint
                for name in set(RUN_FILES) - {ckpt.CONFIG, ckpt.TOKENIZER}:
                    (run_dir / name).unlink(missing_ok=True)
        D.barrier(setup.dist, setup.rt.device)  # nobody logs into a file rank 0 is still trimming
        return writer

    @property
    def write_dir(self) -> Path:
        """Where the run's files go now: the staging directory, or run_dir."""
        return self.staging or self.run_dir

    def log(self, row: dict) -> None:
        """One row of metrics.jsonl (rank 0 only; the others' rows are the same means)."""
        if self.setup.dist.is_main:  # into the staging directory until a replacing run's first checkpoint
            append_text(self.write_dir / METRICS, json.dumps(row) + "\n")  # a refused write: one DiskError

    def close(self) -> None:
        """A replacing run that stops before its first checkpoint leaves the old run as it was."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def save(self, progress: Progress, data_state: torch.Tensor, elapsed: float,
             eval_losses: dict[str, float] | None = None, best: bool = False) -> None:
        """A checkpoint at `progress`; `best`: these weights are also the best so far. Every rank must call it
        (it gathers RNG states). `data_state` is the loader's state before the batch drawn but not yet trained
        on (`Batches.state()`)."""
        setup = self.setup
        if setup.cfg.train.fsdp:
            from .. import fsdp  # imported only for FSDP runs (see run.py)

            weights, opt_state = fsdp.gather_state(setup.model, setup.optimizer)  # a collective
        else:
            weights, opt_state = setup.model, setup.optimizer
        main = setup.dist.is_main
        if best and main:
            ckpt.save_weights(self.write_dir / ckpt.MODEL_BEST, weights, progress.step)
        extra = {**D.rng_states(setup.dist, setup.rt.device), "rng_loader": data_state}  # a collective: every rank
        if main:
            out = self.write_dir
            ckpt.save_weights(out / ckpt.MODEL, weights, progress.step)
            ckpt.save_trainer_state(out, weights, opt_state, extra, {
                "step": progress.step, "best_val": progress.best_val, "tokens": progress.tokens(setup),
                "elapsed": elapsed, "last_eval": eval_losses or {}, "world_size": setup.dist.world_size,
            })
            plot_loss(out / METRICS, out / PLOT, title=setup.cfg.name)
            if self.header_pending:  # config.json last: from now on the directory holds this run
                ckpt.write_run_header(out, setup.cfg, setup.tokenizer, setup.n_params)
            if self.staging is not None:
                with writing(self.run_dir, f"the previous run in '{self.run_dir}' is unchanged"):
                    swap_in(self.staging, self.run_dir, carry=outputs.RUN.carry)  # the user's files
                self.staging = None
        self.header_pending = False
        D.barrier(setup.dist, setup.rt.device)  # the others wait until the checkpoint is whole


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the rows after the checkpoint (and lines a crash cut or damaged); rewritten only when some go."""
    if path.is_file():
        rows = read_metrics(path)
        kept = [r for r in rows if r.get("step", 0) <= step]
        if len(kept) < len(rows) or len(rows) < len(path.read_bytes().splitlines()):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def restore(setup: Setup, run_dir: str | Path) -> Progress:
    """Continue from run_dir's trainer state: weights, optimizer, RNG streams and data position into `setup`'s
    (unwrapped) model, optimizer and loader; returns the step and best val loss it had reached."""
    ckpt.read_config(run_dir)  # a clear error when it is not a run directory
    extra, info = ckpt.load_trainer_state(run_dir, setup.model, setup.optimizer)
    progress = Progress(step=int(info["step"]), best_val=float(info["best_val"]))
    D.restore_rng(extra, setup.dist, setup.rt.device, setup.cfg.train.seed, progress.step)
    setup.loader.set_state(extra["rng_loader"])  # the global data stream: the same at any world size
    return progress

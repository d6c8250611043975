"""The training loop, top to bottom: set up, then step, log, evaluate, save, until done.

Owns `train` (the entry point: one process, or one rank under torchrun), `TrainResult` and the decisions:
when to log, evaluate, save and stop, and which weights are the best. The parts it calls: `run.py` builds
the set-up, `step.py` takes a step, `evaluate.py` measures, `writer.py` writes the run directory and
resumes, `stop.py` catches signals. Does not parse command-line flags (`cli.py` does).
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .. import distributed as D
from .. import runtime
from ..config import Config, default_run_dir
from ..console import echo, progress_bar
from ..errors import Interrupted, UserError
from ..flops import flops_per_token, matmul_params, mfu
from ..optim import lr_at, set_lr
from . import ownership, writer
from .clock import Clock
from .run import Progress, Setup, build_setup, parallelize
from .step import Batches, train_step
from .stop import StopSignals
from .writer import RunWriter


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val: float
    last_eval: dict[str, float]
    elapsed: float
    stopped: str  # done | time_limit | target (val loss reached train.stop_val_loss)


def train(cfg: Config, out_dir: str | Path | None = None, resume: str | Path | None = None,
          launch_time: float | None = None, progress: bool = True, force: bool = False) -> TrainResult:
    """Train per cfg into out_dir (default `config.default_run_dir`), optionally continuing exactly from a run directory.

    A new run refuses a directory that holds another run unless `force`; then the old run stays whole until
    the new run's first checkpoint replaces it. A resume refuses changes to the run's tokenizer and model
    (`ownership.py`). Under torchrun (WORLD_SIZE > 1 in the environment) this joins the process group,
    trains with DDP (or FSDP) and leaves the group at the end; see the package docstring for what batch
    size and resume mean.
    """
    launch = launch_time if launch_time is not None else time.time()
    t = cfg.train
    run_dir = Path(out_dir or resume or t.out_dir or default_run_dir(cfg))
    in_place = resume is not None and run_dir.resolve() == Path(resume).resolve()
    if force and in_place:
        raise UserError("--force starts a new run over an existing one; --resume continues the run in its own "
                        "directory and needs no --force")
    with StopSignals() as stop:  # from the start: a signal during set-up stops after the first step, saved
        if resume is not None:
            ownership.check_resume(cfg, resume)
        replaces = not in_place and ownership.check_target(run_dir, force)
        if replaces and run_dir.is_symlink():
            run_dir = Path(os.path.realpath(run_dir))  # the real directory is the one replaced
        dist = D.world_from_env()
        D.check_launch(t, dist)
        rt = runtime.setup(t.device, t.dtype, threads=t.threads, compile=t.compile,
                           local_rank=dist.local_rank if dist.enabled else None)
        dist = D.setup(dist, rt.device.type, t.dist_timeout)
        try:
            with D.collective_errors(dist, t.dist_timeout):
                setup = build_setup(cfg, rt, dist, run_dir, pretrained=resume is None)
                start = writer.restore(setup, resume) if resume else Progress()
                setup = parallelize(setup, resumed=resume is not None)
                out = RunWriter.start(run_dir, setup, start.step, in_place, replaces)
                try:
                    return _loop(setup, start, out, launch, progress, stop)
                finally:
                    out.close()  # stopped before a replacing run's first checkpoint: the old run stays
        finally:
            D.teardown(dist)


def _loop(setup: Setup, progress: Progress, out: RunWriter, launch: float, show_progress: bool,
          stop: StopSignals) -> TrainResult:
    t, dist = setup.cfg.train, setup.dist
    clock = Clock(launch, dist, setup.rt.device, shared=t.time_limit > 0)  # rank 0's clock on every rank
    speed = _Speedometer(setup, progress.step)
    batches = Batches(setup.loader)
    stopped, last_eval = "done", {}
    if t.eval_at_start and progress.step == 0:
        _evaluate(setup, progress, out, lr_at(0, t), clock)  # the untrained model's loss: about ln(vocab)
    bar = progress_bar(t.max_iters, desc="train", unit="step", initial=progress.step,
                       enabled=show_progress and dist.is_main)  # in a log: one line per log step
    while progress.step < t.max_iters:
        lr = set_lr(setup.optimizer, progress.step, t, clock.now() / t.time_limit if t.schedule_by_time else None)
        loss = train_step(setup.model, setup.forward, setup.optimizer, batches, t, setup.rt, setup.grad_sync)
        progress.step += 1
        log_step = progress.step % t.log_interval == 0 or progress.step == t.max_iters
        clock.tick(log_step)
        out_of_time = t.time_limit > 0 and clock.now() >= t.time_limit
        signum = _agree(setup, log_step, stop.requested)
        last = progress.step == t.max_iters or out_of_time or signum is not None
        if log_step or last:
            lossf = D.mean_float(dist, loss.item(), setup.rt.device)
            _check_finite(lossf, "training loss", progress, out)
            row = {"kind": "train", "step": progress.step, "loss": lossf, "lr": lr, **speed.measure(progress.step),
                   "elapsed": round(clock.local(), 3)}
            out.log(row)
            bar.set_postfix(speed.postfix(row), refresh=False)
        bar.update(1)
        if signum is not None:
            out.save(progress, batches.state(), clock.local())
            bar.close()
            why = signal.Signals(signum).name if stop.requested else "a signal to another rank"
            raise Interrupted(f"stopped by {why} at step {progress.step}; checkpoint saved in '{out.run_dir}' "
                              f"(continue with `scratchgpt train --resume {out.run_dir}`)", signum)
        if progress.step % t.eval_interval == 0 or last:
            last_eval = _evaluate(setup, progress, out, lr, clock)
            best = last_eval["val"] < progress.best_val  # the loop decides; the writer writes what it is told
            if best:
                progress.best_val = last_eval["val"]
            out.save(progress, batches.state(), clock.local(), last_eval, best=best)
            if t.stop_val_loss > 0 and last_eval["val"] <= t.stop_val_loss:
                stopped = "target"
                echo(f"val loss {last_eval['val']:.4f} <= {t.stop_val_loss:g} at step {progress.step}, "
                     f"{clock.local():.1f} s after launch")
                break
        if out_of_time:
            stopped = "time_limit"
            echo(f"time limit of {t.time_limit:g} s reached at step {progress.step}")
            break
    bar.close()
    return TrainResult(out.run_dir, progress.step, progress.best_val, last_eval, clock.local(), stopped)


def _evaluate(setup: Setup, progress: Progress, out: RunWriter, lr: float, clock: Clock) -> dict[str, float]:
    losses = setup.evaluator(setup.model)
    for split, value in losses.items():
        _check_finite(value, f"{split} loss", progress, out)
    out.log({"kind": "eval", "step": progress.step, "train_loss": losses["train"], "val_loss": losses["val"],
             "lr": lr, "elapsed": round(clock.local(), 3)})
    echo(f"step {progress.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    return losses


def _agree(setup: Setup, log_step: bool, signum: int | None) -> int | None:
    """A signal to any rank stops every rank at the same step: compared at log steps only (a sync)."""
    if not setup.dist.enabled:
        return signum
    if not log_step:
        return None
    (stopping,) = D.any_flags(setup.dist, [signum is not None], setup.rt.device)
    return (signum or signal.SIGTERM) if stopping else None


def _check_finite(value: float, what: str, progress: Progress, out: RunWriter) -> None:
    if not math.isfinite(value):
        raise UserError(f"{what} became {value} at step {progress.step}; training stopped and the last good "
                        f"checkpoint in '{out.run_dir}' is kept (try a lower train.learning_rate)")


class _Speedometer:
    """Tokens per second since the last log step, and MFU per device when train.peak_flops is given."""

    def __init__(self, setup: Setup, step: int):
        self.tokens_per_step, self.world = setup.tokens_per_step, setup.dist.world_size
        self.peak = setup.cfg.train.peak_flops
        self.flops_per_token = flops_per_token(setup.cfg.model, matmul_params(setup.model))
        self.tick, self.tick_step = time.time(), step

    def measure(self, step: int) -> dict[str, float]:
        now = time.time()
        tok_s = (step - self.tick_step) * self.tokens_per_step / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, step
        out = {"tokens_per_s": round(tok_s)}
        if self.peak > 0:
            out["mfu"] = round(mfu(tok_s / self.world, self.flops_per_token, self.peak), 4)  # per device
        return out

    @staticmethod
    def postfix(row: dict) -> dict[str, str]:
        post = {"loss": f"{row['loss']:.4f}", "tok_s": f"{row['tokens_per_s']:,.0f}"}
        if "mfu" in row:
            post["mfu"] = f"{row['mfu']:.1%}"
        return post

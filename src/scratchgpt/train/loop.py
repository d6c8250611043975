"""The training loop, top to bottom: set up, then step, log, evaluate, save, until done.

Owns `train` (the entry point: one process, or one rank under torchrun) and `TrainResult`. The parts it
calls: `run.py` builds the run, `step.py` takes a step, `evaluate.py` measures, `checkpoints.py` writes
and resumes, `stop.py` catches signals. Does not parse command-line flags (`cli.py` does).
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .. import distributed as D
from .. import runtime
from ..config import Config, default_run_dir
from ..console import echo
from ..errors import Interrupted, UserError
from ..flops import flops_per_token, matmul_params, mfu
from ..optim import lr_at, set_lr
from . import checkpoints, ownership
from .checkpoints import MetricsLog
from .run import TrainingRun, build_run, parallelize
from .step import Batches, train_step
from .stop import StopSignals


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
                run = build_run(cfg, rt, dist, run_dir, pretrained=resume is None)
                if resume:
                    checkpoints.restore(run, resume)
                checkpoints.start_run_dir(run, in_place, replaces)
                try:
                    parallelize(run, resumed=resume is not None)
                    return _loop(run, launch, progress, stop)
                finally:
                    checkpoints.drop_staging(run)  # stopped before a replacing run's first checkpoint
        finally:
            D.teardown(dist)


def _loop(run: TrainingRun, launch: float, progress: bool, stop: StopSignals) -> TrainResult:
    t, dist = run.cfg.train, run.dist
    log = MetricsLog(run)
    speed = _Speedometer(run)
    batches = Batches(run.loader)
    stopped, last_eval = "done", {}
    if t.eval_at_start and run.step == 0:
        _evaluate(run, log, lr_at(0, t), launch)  # the untrained model's loss: about ln(vocab) when the init is right
    bar = tqdm(total=t.max_iters, initial=run.step, disable=not (progress and dist.is_main), unit="step",
               dynamic_ncols=True)
    while run.step < t.max_iters:
        time_frac = (time.time() - launch) / t.time_limit if t.schedule_by_time else None
        lr = set_lr(run.optimizer, run.step, t, time_frac)
        loss = train_step(run.model, run.forward, run.optimizer, batches, t, run.rt, run.grad_sync)
        run.step += 1
        log_step = run.step % t.log_interval == 0 or run.step == t.max_iters
        out_of_time = t.time_limit > 0 and time.time() - launch >= t.time_limit
        signum = stop.requested
        if dist.enabled:  # every rank must take the same branch; agree at log steps only (a sync)
            out_of_time, signum = _agree(run, log_step, out_of_time, signum)
        last = run.step == t.max_iters or out_of_time or signum is not None
        if log_step or last:
            lossf = D.mean_float(dist, loss.item(), run.rt.device)
            _check_finite(lossf, "training loss", run)
            row = {"kind": "train", "step": run.step, "loss": lossf, "lr": lr, **speed.measure(run.step),
                   "elapsed": round(time.time() - launch, 3)}
            log.write(row)
            bar.set_postfix(speed.postfix(row), refresh=False)
        bar.update(1)
        if signum is not None:
            checkpoints.save(run, None, batches.state(), launch)
            bar.close()
            why = signal.Signals(signum).name if stop.requested else "a signal to another rank"
            raise Interrupted(f"stopped by {why} at step {run.step}; checkpoint saved in '{run.run_dir}' "
                              f"(continue with `scratchgpt train --resume {run.run_dir}`)", signum)
        if run.step % t.eval_interval == 0 or last:
            last_eval = _evaluate(run, log, lr, launch)
            checkpoints.save(run, last_eval, batches.state(), launch)
            if t.stop_val_loss > 0 and last_eval["val"] <= t.stop_val_loss:
                stopped = "target"
                echo(f"val loss {last_eval['val']:.4f} <= {t.stop_val_loss:g} at step {run.step}, "
                     f"{time.time() - launch:.1f} s after launch")
                break
        if out_of_time:
            stopped = "time_limit"
            echo(f"time limit of {t.time_limit:g} s reached at step {run.step}")
            break
    bar.close()
    return TrainResult(run.run_dir, run.step, run.best_val, last_eval, time.time() - launch, stopped)


def _evaluate(run: TrainingRun, log: MetricsLog, lr: float, launch: float) -> dict[str, float]:
    losses = run.evaluator(run.model)
    for split, value in losses.items():
        _check_finite(value, f"{split} loss", run)
    log.write({"kind": "eval", "step": run.step, "train_loss": losses["train"], "val_loss": losses["val"],
               "lr": lr, "elapsed": round(time.time() - launch, 3)})
    echo(f"step {run.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    return losses


def _agree(run: TrainingRun, log_step: bool, out_of_time: bool, signum: int | None) -> tuple[bool, int | None]:
    """The same stop decision on every rank: any rank's time limit or signal, compared at log steps only."""
    if not log_step:
        return False, None
    out_of_time, stopping = D.any_flags(run.dist, [out_of_time, signum is not None], run.rt.device)
    return out_of_time, (signum or signal.SIGTERM) if stopping else None


def _check_finite(value: float, what: str, run: TrainingRun) -> None:
    if not math.isfinite(value):
        raise UserError(f"{what} became {value} at step {run.step}; training stopped and the last good checkpoint "
                        f"in '{run.run_dir}' is kept (try a lower train.learning_rate)")


class _Speedometer:
    """Tokens per second since the last log step, and MFU per device when train.peak_flops is given."""

    def __init__(self, run: TrainingRun):
        self.tokens_per_step, self.world = run.tokens_per_step, run.dist.world_size
        self.peak = run.cfg.train.peak_flops
        self.flops_per_token = flops_per_token(run.cfg.model, matmul_params(run.model))
        self.tick, self.tick_step = time.time(), run.step

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

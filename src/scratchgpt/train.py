"""Training: evaluation, the loop, checkpoints, signals, on one process or many (DDP under torchrun).

Owns `Evaluator`, `train` and the helpers they need (device and autocast choice, the NaN guard, Ctrl-C
handling). The loop is written by hand because it is the point of the project; the
optimizers and schedule live in `optim.py`, the process group in `distributed.py`. Does not parse
command-line flags (`cli.py` does) or know the file format of a run (`checkpoint.py` does).

Many processes (`torchrun --nproc_per_node N -m scratchgpt.cli train ...`): `train.batch_size` is the
global batch per micro-step, split evenly over the ranks (a world size that does not divide it is an
error), so a recipe means the same run on any number of processes. Every rank draws the same global
batch from the same seeded stream and keeps its own rows; gradients are all-reduced by DDP on the last
micro-step only; logged and evaluated losses are the means over all ranks; rank 0 alone writes the run
directory while the others wait at a barrier. A checkpoint holds the data stream's state (the same on
every rank) and each rank's torch RNG state (dropout); resuming on a different world size keeps the data
stream exactly, restores the RNG of the ranks that exist in both, and seeds new ranks from
(seed, rank, step). Time-limit and Ctrl-C stops are agreed between ranks at log steps. With train.fsdp the
model is sharded instead (`fsdp.py`); checkpoints are gathered into the same unsharded files.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed as D
from .config import Config
from .console import echo
from .data import BatchLoader, load_meta
from .errors import Interrupted, UserError
from .fileio import append_text, atomic_write_text
from .flops import flops_per_token, matmul_params, mfu
from .memory import check_train as check_train_memory
from .models import build_model
from .optim import configure_optimizer, lr_at, set_lr
from .plots import plot_loss, read_metrics
from .tokenizers import tokenizer_from_json


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; asking for one that is absent is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # sample/serve take --device as free text
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or mps") from None
    # the messages name no flag: train (train.device), sample and serve (--device) all come here
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but no CUDA GPU is available; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' was asked for but MPS is not available; use cpu or auto")
    return device


def autocast_context(device: torch.device, dtype: str):
    """bf16 autocast on CUDA by default (fp32 master weights); plain fp32 elsewhere unless asked."""
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


__all__ = ["Evaluator", "TrainResult", "autocast_context", "configure_optimizer", "lr_at", "resolve_device", "train"]


class Evaluator:
    """Mean loss on train and val over eval_iters fixed random batches (val over the whole split if full_val).

    Its loaders restart from the same seed every call, so successive evaluations see the same batches and
    the training RNG is never touched. With many ranks each evaluates its rows of every batch and the sums
    are all-reduced, so every rank gets the loss one process would get (up to summation order).
    """

    def __init__(self, data_dir: str, block_size: int, batch_size: int, eval_iters: int,
                 device: torch.device, seed: int, ctx_factory, full_val: bool = False,
                 dist: D.DistContext | None = None):
        self.eval_iters = eval_iters
        self.full_val = full_val
        self.ctx_factory = ctx_factory
        self.dist = dist or D.DistContext()
        self.device = device
        shard = (self.dist.rank, self.dist.world_size)
        self.loaders = {s: BatchLoader(data_dir, s, block_size, batch_size, device, seed + 1 + i, shard)
                        for i, s in enumerate(("train", "val"))}
        self.initial = {s: ld.state() for s, ld in self.loaders.items()}

    @torch.no_grad()
    def __call__(self, model: nn.Module, splits: tuple[str, ...] = ("train", "val")) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for split in splits:
            loader = self.loaders[split]
            loader.set_state(self.initial[split])
            full = self.full_val and split == "val"
            batches = loader.sequential() if full else (loader.get_batch() for _ in range(self.eval_iters))
            total, count = torch.zeros((), dtype=torch.float64), 0
            for x, y in batches:
                if y.numel() == 0:  # a rank with no rows of a short last batch
                    continue
                with self.ctx_factory():
                    _, loss = model(x, y)
                total += loss.double().cpu() * y.numel()
                count += y.numel()
            if self.dist.enabled:
                both = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
                total, count = D.sum_(self.dist, both.to(D.comm_device(self.device))).cpu().unbind()
            out[split] = (total / count).item()
        model.train(was_training)
        return out


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val: float
    last_eval: dict[str, float]
    elapsed: float
    stopped: str  # done | time_limit | target (val loss reached train.stop_val_loss)


class _StopFlag:
    """First Ctrl-C asks the loop to save and stop after the current step; a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _check_finite(value: float, what: str, step: int, run_dir: Path) -> None:
    if not math.isfinite(value):
        raise UserError(f"{what} became {value} at step {step}; training stopped and the last good checkpoint "
                        f"in '{run_dir}' is kept (try a lower train.learning_rate)")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop lines written after the checkpoint so the log reads as one continuous run."""
    if path.is_file():
        rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: Config, out_dir: str | Path | None = None, resume: str | Path | None = None,
          launch_time: float | None = None, progress: bool = True) -> TrainResult:
    """Train per cfg into out_dir (default runs/<name>), optionally continuing exactly from a run directory.

    Under torchrun (WORLD_SIZE > 1 in the environment) this joins the process group, trains with DDP and
    leaves the group at the end; see the module docstring for what batch size and resume mean there.
    """
    launch = launch_time if launch_time is not None else time.time()
    t = cfg.train
    dist = D.world_from_env()
    if t.batch_size % dist.world_size:
        raise D.DistributedError(
            f"train.batch_size ({t.batch_size}) is the global batch and must split evenly over the "
            f"{dist.world_size} processes; use a multiple of {dist.world_size}"
        )
    if t.schedule_by_time and dist.enabled:  # each rank's clock differs, and their lrs must not
        raise D.DistributedError("train.schedule_by_time follows one process's clock; set it false under torchrun")
    if t.fsdp and not dist.enabled:
        raise D.DistributedError("train.fsdp shards the model over several processes; launch with "
                                 "`torchrun --nproc_per_node N -m scratchgpt.cli train ...` (N >= 2) or set it false")
    device = resolve_device(t.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    dist = D.setup(dist, device.type, t.dist_timeout)
    try:
        with D.collective_errors(dist, t.dist_timeout):
            return _train(cfg, dist, device, launch, out_dir, resume, progress)
    finally:
        D.teardown(dist)


def _train(cfg: Config, dist: D.DistContext, device: torch.device, launch: float, out_dir: str | Path | None,
           resume: str | Path | None, progress: bool) -> TrainResult:
    t = cfg.train
    meta = load_meta(cfg.data.dir)
    tokenizer = tokenizer_from_json(meta["tokenizer"])
    pretrained = None
    if cfg.model.init_from and not resume:  # start from GPT-2 weights; a resumed run restores its own
        from .interop.hf import apply_init_from, load_state
        cfg, pretrained = apply_init_from(cfg, tokenizer)
    cfg = ckpt.resolved_model_config(cfg, meta["vocab_size"])
    check_train_memory(cfg, device, dist.world_size)  # refuse what cannot fit before anything is allocated
    run_dir = Path(out_dir or (resume if resume else None) or t.out_dir or f"runs/{cfg.name}")
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)  # the same on every rank: identical initial weights
    model = build_model(cfg.model).to(device)
    if pretrained is not None:
        load_state(model, pretrained)
    if dist.rank:
        torch.manual_seed(D.rank_seed(t.seed, dist.rank, 0))  # its own dropout masks
    optimizer = configure_optimizer(model, t, device)
    block = cfg.model.block_size
    shard = (dist.rank, dist.world_size)
    loader = BatchLoader(cfg.data.dir, "train", block, t.batch_size, device, t.seed, shard)
    ctx_factory = lambda: autocast_context(device, t.dtype)  # noqa: E731
    # under FSDP every forward is a collective, so every rank evaluates whole batches (no uneven shards)
    evaluator = Evaluator(cfg.data.dir, block, t.eval_batch_size or t.batch_size, t.eval_iters, device, t.seed, ctx_factory,
                          t.full_val, None if t.fsdp else dist)

    step, best_val, last_eval = 0, math.inf, {}
    if resume:
        ckpt.read_config(resume)  # a clear error when it is not a run directory
        extra, info = ckpt.load_trainer_state(resume, model, optimizer)
        step, best_val = int(info["step"]), float(info["best_val"])
        D.restore_rng(extra, dist, device, t.seed, step)
        loader.set_state(extra["rng_loader"])  # the global data stream: the same at any world size
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    main = dist.is_main
    if main:
        if resume:
            _trim_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()  # a fresh run in a reused directory starts a fresh log
        ckpt.write_run_header(run_dir, cfg, tokenizer, model.num_params())
    D.barrier(dist, device)  # nobody logs into a file rank 0 is still trimming
    echo(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters (position embeddings excluded); "
         f"device {device.type}" + (f" x {dist.world_size} processes" if dist.enabled else "") +
         f"; run directory {run_dir}")

    ddp = None
    if t.fsdp:  # shard the (possibly resumed) weights, then rebuild the optimizer over the shards
        from . import fsdp

        names, plain_params = fsdp.param_names(model), [p for g in optimizer.param_groups for p in g["params"]]
        plain_state = optimizer.state_dict() if resume else None
        fsdp.shard_model(model)
        optimizer = configure_optimizer(model, t, device)
        if plain_state is not None:
            fsdp.load_optimizer_state(model, optimizer, plain_state, plain_params, names)
    elif dist.enabled:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # the only buffers are constant rope tables: skip the per-step broadcast (newer torch renamed the flag)
        quiet = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else "broadcast_buffers": False}
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **quiet)
    fwd = ddp or model
    fwd = torch.compile(fwd) if t.compile else fwd
    tokens_per_step = t.batch_size * block * t.grad_accum_steps  # global: all ranks together
    flops_tok = flops_per_token(cfg.model, matmul_params(model))

    def log(row: dict) -> None:
        if main:
            append_text(metrics_path, json.dumps(row) + "\n")  # a refused write: one DiskError sentence

    loader_state = loader.state()  # the state before the batch that is drawn but not yet used

    def save(eval_losses: dict[str, float] | None) -> None:
        nonlocal best_val
        weights, opt_state = fsdp.gather_state(model, optimizer) if t.fsdp else (model, optimizer)  # collective
        if eval_losses is not None and eval_losses["val"] < best_val:
            best_val = eval_losses["val"]
            if main:
                ckpt.save_weights(run_dir / ckpt.MODEL_BEST, weights, step)
        extra = {**D.rng_states(dist, device), "rng_loader": loader_state}  # a collective: every rank
        if main:
            ckpt.save_weights(run_dir / ckpt.MODEL, weights, step)
            ckpt.save_trainer_state(run_dir, weights, opt_state, extra, {
                "step": step, "best_val": best_val, "tokens": step * tokens_per_step,
                "elapsed": time.time() - launch, "last_eval": eval_losses or {}, "world_size": dist.world_size,
            })
            plot_loss(metrics_path, run_dir / "loss.png", title=cfg.name)
        D.barrier(dist, device)  # the others wait until the checkpoint is whole

    def evaluate() -> dict[str, float]:
        losses = evaluator(model)
        for split, value in losses.items():
            _check_finite(value, f"{split} loss", step, run_dir)
        log({"kind": "eval", "step": step, "train_loss": losses["train"], "val_loss": losses["val"],
             "lr": lr, "elapsed": round(time.time() - launch, 3)})
        echo(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return losses

    model.train()
    stopped = "done"
    lr = lr_at(step, t)
    if t.eval_at_start and step == 0:
        evaluate()  # the untrained model's loss: about ln(vocab) when the init is right
    x, y = loader.get_batch()
    bar = tqdm(total=t.max_iters, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True)
    tick, tick_step = time.time(), step
    with _StopFlag() as stop:
        while step < t.max_iters:
            time_frac = (time.time() - launch) / t.time_limit if t.schedule_by_time else None
            lr = set_lr(optimizer, step, t, time_frac)
            for micro in range(t.grad_accum_steps):
                # DDP all-reduces gradients in backward; only the last micro-step needs it
                sync = ddp is None or micro == t.grad_accum_steps - 1
                if t.fsdp:  # FSDP's own switch for the reduce-scatter of gradients
                    model.set_requires_gradient_sync(micro == t.grad_accum_steps - 1)
                with contextlib.nullcontext() if sync else ddp.no_sync():
                    with ctx_factory():
                        _, loss = fwd(x, y)
                    loader_state = loader.state()
                    x, y = loader.get_batch()  # drawn while the device still works on this step
                    (loss / t.grad_accum_steps).backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            out_of_time = t.time_limit > 0 and time.time() - launch >= t.time_limit
            interrupted = stop.requested
            if dist.enabled:  # every rank must take the same branch; agree at log steps only (a sync)
                if step % t.log_interval == 0 or step == t.max_iters:
                    out_of_time, interrupted = D.any_flags(dist, [out_of_time, interrupted], device)
                else:
                    out_of_time = interrupted = False
            last = step == t.max_iters or out_of_time or interrupted
            if step % t.log_interval == 0 or last:
                lossf = D.mean_float(dist, loss.item(), device)
                _check_finite(lossf, "training loss", step, run_dir)
                now = time.time()
                tok_s = (step - tick_step) * tokens_per_step / max(now - tick, 1e-9)
                tick, tick_step = now, step
                row = {"kind": "train", "step": step, "loss": lossf, "lr": lr, "tokens_per_s": round(tok_s),
                       "elapsed": round(now - launch, 3)}
                post = {"loss": f"{lossf:.4f}", "tok_s": f"{tok_s:,.0f}"}
                if t.peak_flops > 0:
                    row["mfu"] = round(mfu(tok_s / dist.world_size, flops_tok, t.peak_flops), 4)  # per device
                    post["mfu"] = f"{row['mfu']:.1%}"
                log(row)
                bar.set_postfix(post, refresh=False)
            bar.update(1)
            if interrupted:
                save(None)
                bar.close()
                raise Interrupted(f"interrupted at step {step}; checkpoint saved in '{run_dir}' "
                                  f"(continue with `scratchgpt train --resume {run_dir}`)")
            if step % t.eval_interval == 0 or last:
                last_eval = evaluate()
                save(last_eval)
                if t.stop_val_loss > 0 and last_eval["val"] <= t.stop_val_loss:
                    stopped = "target"
                    echo(f"val loss {last_eval['val']:.4f} <= {t.stop_val_loss:g} at step {step}, "
                         f"{time.time() - launch:.1f} s after launch")
                    break
            if out_of_time:
                stopped = "time_limit"
                echo(f"time limit of {t.time_limit:g} s reached at step {step}")
                break
    bar.close()
    return TrainResult(run_dir, step, best_val, last_eval, time.time() - launch, stopped)

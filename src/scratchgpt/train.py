"""Training: optimizer groups, learning-rate schedule, evaluation, the loop, checkpoints, signals.

Owns `configure_optimizer`, `lr_at`, `Evaluator`, `train` and the helpers they need (device and autocast
choice, the NaN guard, Ctrl-C handling). The loop is written by hand because it is the point of the
project; the optimizer is `torch.optim.AdamW`. Does not parse command-line flags (`cli.py` does) or know the
file format of a run (`checkpoint.py` does).
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
from .config import Config, TrainConfig
from .console import echo, is_main_process
from .data import BatchLoader, load_meta
from .errors import Interrupted, UserError
from .fileio import atomic_write_text
from .models import build_model
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
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is available; use --train.device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device is 'mps' but MPS is not available; use --train.device=cpu or auto")
    return torch.device(name)


def autocast_context(device: torch.device, dtype: str):
    """bf16 autocast on CUDA by default (fp32 master weights); plain fp32 elsewhere unless asked."""
    if dtype == "float32" or (dtype == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def configure_optimizer(model: nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, linear weights) only; biases and norms are not decayed."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2),
                             fused=device.type == "cuda")


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup from 0 to learning_rate, then cosine (or linear) decay to min_lr, then flat."""
    if t.lr_schedule == "constant":
        return t.learning_rate
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    decay_iters = t.lr_decay_iters or t.max_iters
    if step >= decay_iters:
        return t.min_lr
    frac = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * frac)) if t.lr_schedule == "cosine" else 1.0 - frac
    return t.min_lr + coeff * (t.learning_rate - t.min_lr)


class Evaluator:
    """Mean loss on train and val over eval_iters fixed random batches (val over the whole split if full_val).

    Its loaders restart from the same seed every call, so successive evaluations see the same batches and
    the training RNG is never touched.
    """

    def __init__(self, data_dir: str, block_size: int, batch_size: int, eval_iters: int,
                 device: torch.device, seed: int, ctx_factory, full_val: bool = False):
        self.eval_iters = eval_iters
        self.full_val = full_val
        self.ctx_factory = ctx_factory
        self.loaders = {s: BatchLoader(data_dir, s, block_size, batch_size, device, seed + 1 + i)
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
                with self.ctx_factory():
                    _, loss = model(x, y)
                total += loss.double().cpu() * y.numel()
                count += y.numel()
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
    stopped: str  # done | time_limit


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
    """Train per cfg into out_dir (default runs/<name>), optionally continuing exactly from a run directory."""
    launch = launch_time if launch_time is not None else time.time()
    t = cfg.train
    meta = load_meta(cfg.data.dir)
    tokenizer = tokenizer_from_json(meta["tokenizer"])
    pretrained = None
    if cfg.model.init_from and not resume:  # start from GPT-2 weights; a resumed run restores its own
        from .interop.hf import apply_init_from, load_state
        cfg, pretrained = apply_init_from(cfg, tokenizer)
    cfg = ckpt.resolved_model_config(cfg, meta["vocab_size"])
    run_dir = Path(out_dir or (resume if resume else None) or t.out_dir or f"runs/{cfg.name}")
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)
    model = build_model(cfg.model).to(device)
    if pretrained is not None:
        load_state(model, pretrained)
    optimizer = configure_optimizer(model, t, device)
    block = cfg.model.block_size
    loader = BatchLoader(cfg.data.dir, "train", block, t.batch_size, device, t.seed)
    ctx_factory = lambda: autocast_context(device, t.dtype)  # noqa: E731
    evaluator = Evaluator(cfg.data.dir, block, t.eval_batch_size or t.batch_size, t.eval_iters, device, t.seed, ctx_factory,
                          t.full_val)

    step, best_val, last_eval = 0, math.inf, {}
    if resume:
        ckpt.read_config(resume)  # a clear error when it is not a run directory
        extra, info = ckpt.load_trainer_state(resume, model, optimizer)
        step, best_val = int(info["step"]), float(info["best_val"])
        torch.set_rng_state(extra["rng_cpu"])
        loader.set_state(extra["rng_loader"])
        if device.type == "cuda" and "rng_cuda" in extra:
            torch.cuda.set_rng_state(extra["rng_cuda"])
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        _trim_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()  # a fresh run in a reused directory starts a fresh log
    main = is_main_process()
    if main:
        ckpt.write_run_header(run_dir, cfg, tokenizer, model.num_params())
    echo(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters (position embeddings excluded); "
         f"device {device.type}; run directory {run_dir}")

    fwd = torch.compile(model) if t.compile else model
    tokens_per_step = t.batch_size * block * t.grad_accum_steps

    def log(row: dict) -> None:
        if main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    loader_state = loader.state()  # the state before the batch that is drawn but not yet used

    def save(eval_losses: dict[str, float] | None) -> None:
        nonlocal best_val
        if not main:
            return
        if eval_losses is not None and eval_losses["val"] < best_val:
            best_val = eval_losses["val"]
            ckpt.save_weights(run_dir / ckpt.MODEL_BEST, model, step)
        ckpt.save_weights(run_dir / ckpt.MODEL, model, step)
        extra = {"rng_cpu": torch.get_rng_state(), "rng_loader": loader_state}
        if device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state()
        ckpt.save_trainer_state(run_dir, model, optimizer, extra, {
            "step": step, "best_val": best_val, "tokens": step * tokens_per_step,
            "elapsed": time.time() - launch, "last_eval": eval_losses or {},
        })
        plot_loss(metrics_path, run_dir / "loss.png", title=cfg.name)

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
    x, y = loader.get_batch()
    bar = tqdm(total=t.max_iters, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True)
    tick, tick_step = time.time(), step
    with _StopFlag() as stop:
        while step < t.max_iters:
            lr = lr_at(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(t.grad_accum_steps):
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
            last = step == t.max_iters or out_of_time or stop.requested
            if step % t.log_interval == 0 or last:
                lossf = loss.item()
                _check_finite(lossf, "training loss", step, run_dir)
                now = time.time()
                tok_s = (step - tick_step) * tokens_per_step / max(now - tick, 1e-9)
                tick, tick_step = now, step
                log({"kind": "train", "step": step, "loss": lossf, "lr": lr, "tokens_per_s": round(tok_s),
                     "elapsed": round(now - launch, 3)})
                bar.set_postfix(loss=f"{lossf:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            bar.update(1)
            if stop.requested:
                save(None)
                bar.close()
                raise Interrupted(f"interrupted at step {step}; checkpoint saved in '{run_dir}' "
                                  f"(continue with `scratchgpt train --resume {run_dir}`)")
            if step % t.eval_interval == 0 or last:
                last_eval = evaluate()
                save(last_eval)
            if out_of_time:
                stopped = "time_limit"
                echo(f"time limit of {t.time_limit:g} s reached at step {step}")
                break
    bar.close()
    return TrainResult(run_dir, step, best_val, last_eval, time.time() - launch, stopped)

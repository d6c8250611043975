"""Training speed on random tokens: tokens/s, ms per step, MFU and peak memory for a recipe.

Owns `bench_train` (one process; the runtime, model, optimizer and the very step the trainer takes,
`train.step.train_step`, on random tokens so that no data is needed; warm-up steps, where compilation
happens, are not timed), `BenchResult` and `format_table`. Does not read data, write runs or know any
device's peak FLOP/s: MFU is reported only against the peak the caller passes.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, replace

import torch

from . import runtime
from .checkpoint import resolved_model_config
from .config import Config
from .data import load_meta
from .errors import DataError, UserError
from .flops import flops_per_token, matmul_params, mfu
from .memory import check_train
from .models import build_model
from .optim import configure_optimizer, set_lr
from .train.step import Batches, train_step

GPT2_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64, the usual speed choice


@dataclass(frozen=True)
class BenchResult:
    name: str
    device: str
    params: int
    batch_size: int
    block_size: int
    grad_accum_steps: int
    steps: int
    tokens_per_s: float
    ms_per_step: float
    mfu: float | None  # None when no peak was given
    peak_memory: int | None  # bytes: CUDA max_memory_allocated, else the process's peak RSS
    memory_kind: str  # cuda | rss | n/a
    final_loss: float


def _vocab(cfg: Config) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    try:
        return int(load_meta(cfg.data.dir)["vocab_size"])
    except DataError:
        raise UserError(f"'{cfg.data.dir}' is not prepared, so the vocabulary size is unknown; random tokens need "
                        f"only that: pass --model.vocab_size=N (65 for tiny Shakespeare char, {GPT2_VOCAB} for GPT-2)") from None


class RandomTokens:
    """Batches of uniformly random token ids, from a seeded generator on the device (a `Batches` source)."""

    def __init__(self, vocab_size: int, batch_size: int, block_size: int, device: torch.device, seed: int):
        self.shape, self.vocab_size = (batch_size, block_size + 1), vocab_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.randint(self.vocab_size, self.shape, generator=self.generator, device=self.generator.device)
        return xy[:, :-1], xy[:, 1:]  # (B, T) each

    def state(self) -> torch.Tensor:
        return self.generator.get_state()


def bench_train(cfg: Config, steps: int = 20, warmup: int = 5, peak_flops: float = 0.0) -> BenchResult:
    """Time `steps` optimizer steps of cfg's model on random tokens after `warmup` untimed ones."""
    if steps <= 0 or warmup < 0:
        raise UserError(f"bench needs a positive number of steps and no negative warm-up, got {steps} and {warmup}")
    cfg = resolved_model_config(cfg, _vocab(cfg))
    t, m = cfg.train, cfg.model
    rt = runtime.setup(t.device, t.dtype, threads=t.threads, seed=t.seed, compile=t.compile)
    check_train(cfg, rt.device)  # refuse what cannot fit before anything is allocated
    model = build_model(m).to(rt.device)
    optimizer = configure_optimizer(model, t, rt.device)
    forward = rt.compiled(model)
    batches = Batches(RandomTokens(m.vocab_size, t.batch_size, m.block_size, rt.device, t.seed))

    def step(i: int) -> torch.Tensor:
        set_lr(optimizer, i, t)
        return train_step(model, forward, optimizer, batches, t, rt)

    model.train()
    for i in range(warmup):
        step(i)
    rt.synchronize()
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loss = step(i)
    final = loss.item()  # waits for the last step
    rt.synchronize()
    elapsed = time.perf_counter() - start
    tokens = steps * t.batch_size * m.block_size * t.grad_accum_steps
    tok_s = tokens / elapsed
    if rt.device.type == "cuda":
        mem, kind = torch.cuda.max_memory_allocated(), "cuda"
    elif sys.platform.startswith("linux"):
        mem, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"  # Linux reports KiB
    else:
        mem, kind = None, "n/a"
    fpt = flops_per_token(m, matmul_params(model))
    return BenchResult(cfg.name, str(rt.device), model.num_params(), t.batch_size, m.block_size, t.grad_accum_steps,
                       steps, tok_s, 1000 * elapsed / steps, mfu(tok_s, fpt, peak_flops) if peak_flops > 0 else None,
                       mem, kind, final)


def with_overrides(cfg: Config, batch_size: int | None = None, device: str | None = None) -> Config:
    """cfg with the bench command's shortcuts applied (None leaves a key as the recipe has it)."""
    t = cfg.train
    return replace(cfg, train=replace(t, batch_size=batch_size or t.batch_size, device=device or t.device))


def format_table(results: list[BenchResult]) -> str:
    """A plain-text table, one row per result."""
    head = ["config", "device", "params", "batch x block x accum", "tokens/s", "ms/step", "MFU", "peak memory"]
    rows = [head]
    for r in results:
        mem = "n/a" if r.peak_memory is None else f"{r.peak_memory / 2**30:.2f} GiB" + (" RSS" if r.memory_kind == "rss" else "")
        rows.append([r.name, r.device, f"{r.params / 1e6:.2f}M", f"{r.batch_size} x {r.block_size} x {r.grad_accum_steps}",
                     f"{r.tokens_per_s:,.0f}", f"{r.ms_per_step:.1f}", "n/a" if r.mfu is None else f"{r.mfu:.1%}", mem])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)

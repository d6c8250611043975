"""Building a training run: config -> model, optimizer, loaders and evaluator, on one process or many.

Owns `Setup` (what a step computes with: fixed once built), `Progress` (how far the run got: the loop
advances it, a checkpoint records it), `build_setup` (the data's tokenizer, a pretrained start
(`model.init_from`), the model, optimizer, loader and evaluator) and `parallelize` (DDP, or FSDP's shards,
on many processes; then `torch.compile`). Does not own resuming or the run directory (`writer.py`), the loop
(`loop.py`), a step (`step.py`) or the file format (`checkpoint.py`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .. import checkpoint as ckpt
from .. import distributed as D
from ..chat_data import ChatLoader
from ..config import Config, ConfigError
from ..console import echo
from ..data import BatchLoader, load_meta
from ..interop.hf import apply_init_from, load_state
from ..memory import check_train as check_train_memory
from ..models import build_model
from ..optim import OptimizerSet, configure_optimizer
from ..runtime import Runtime
from ..tokenizers import Tokenizer, tokenizer_from_json
from .evaluate import Evaluator
from .step import no_grad_sync


@dataclass(frozen=True)
class Setup:
    """A run ready to train: what it computes, where and with what. `parallelize` returns a wrapped copy."""

    cfg: Config  # resolved: model.vocab_size filled in, an imported shape applied
    rt: Runtime
    dist: D.DistContext
    tokenizer: Tokenizer
    model: nn.Module  # the plain module: evaluation, clipping and checkpoints use it
    forward: nn.Module  # what a step calls: the model, DDP-wrapped or sharded, possibly compiled
    optimizer: torch.optim.Optimizer | OptimizerSet
    loader: BatchLoader
    evaluator: Evaluator
    grad_sync: Callable[[bool], contextlib.AbstractContextManager] = no_grad_sync
    n_params: int = 0  # recorded in config.json (counted before FSDP shards the model)

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, over all ranks together."""
        t = self.cfg.train
        return t.batch_size * self.cfg.model.block_size * t.grad_accum_steps


@dataclass
class Progress:
    """How far a run got: advanced by the loop alone, recorded by each checkpoint, read back by a resume."""

    step: int = 0
    best_val: float = math.inf  # the lowest val loss evaluated so far (the loop decides what is best)

    def tokens(self, setup: Setup) -> int:
        return self.step * setup.tokens_per_step


def build_setup(cfg: Config, rt: Runtime, dist: D.DistContext, run_dir: Path, pretrained: bool = True) -> Setup:
    """A run at step 0: the model freshly initialised (or from `model.init_from` when `pretrained`; a resumed
    run passes False, since its own weights replace these), the optimizer, the loader and the evaluator."""
    t = cfg.train
    meta = load_meta(cfg.data.dir)
    tokenizer = tokenizer_from_json(meta["tokenizer"])
    kind = meta.get("data_format", "text")
    if kind != cfg.data.format:
        raise ConfigError(f"'data.format' is {cfg.data.format!r} but '{cfg.data.dir}' holds {kind} data; set "
                          f"data.format = {kind!r} or prepare the data as {cfg.data.format}")
    loader = ChatLoader if kind == "chat" else BatchLoader
    weights = None
    if cfg.model.init_from and pretrained:  # start from another run's weights, or GPT-2's
        init = ckpt.init_from_run if ckpt.is_run_dir(cfg.model.init_from) else apply_init_from
        cfg, weights = init(cfg, tokenizer)
    cfg = ckpt.resolved_model_config(cfg, meta["vocab_size"])
    check_train_memory(cfg, rt.device, dist.world_size)  # refuse what cannot fit before anything is allocated

    torch.manual_seed(t.seed)  # the same on every rank: identical initial weights
    model = build_model(cfg.model).to(rt.device)
    if weights is not None:
        load_state(model, weights)
    if dist.rank:
        torch.manual_seed(D.rank_seed(t.seed, dist.rank, 0))  # its own dropout masks
    block, shard = cfg.model.block_size, (dist.rank, dist.world_size)
    # under FSDP every forward is a collective, so every rank evaluates whole batches (no uneven shards)
    setup = Setup(
        cfg, rt, dist, tokenizer, model, model, configure_optimizer(model, t, rt.device),
        loader(cfg.data.dir, "train", block, t.batch_size, rt.device, t.seed, shard),
        Evaluator(cfg.data.dir, block, t.eval_batch_size or t.batch_size, t.eval_iters, rt, t.seed, t.full_val,
                  None if t.fsdp else dist, loader),
        n_params=model.num_params(),
    )
    echo(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters (position embeddings excluded); "
         f"device {rt.device.type}" + (f" x {dist.world_size} processes" if dist.enabled else "") +
         f"; run directory {run_dir}")
    return setup


def parallelize(setup: Setup, resumed: bool) -> Setup:
    """Shard the model (FSDP) or wrap it in DDP when there are many processes (one process is left as is),
    then compile what a step calls if asked. Comes after resuming: FSDP shards the restored weights."""
    t, model, device = setup.cfg.train, setup.model, setup.rt.device
    forward, optimizer, grad_sync = model, setup.optimizer, setup.grad_sync
    if t.fsdp:  # shard the (possibly resumed) weights, then rebuild the optimizer over the shards
        from .. import fsdp  # torch.distributed.checkpoint takes seconds to import: only when asked for

        names = fsdp.param_names(model)
        plain_params = [p for g in optimizer.param_groups for p in g["params"]]
        plain_state = optimizer.state_dict() if resumed else None
        fsdp.shard_model(model)
        optimizer = configure_optimizer(model, t, device)
        if plain_state is not None:
            fsdp.load_optimizer_state(model, optimizer, plain_state, plain_params, names)

        def grad_sync(last: bool) -> contextlib.AbstractContextManager:
            model.set_requires_gradient_sync(last)  # FSDP's own switch for the reduce-scatter of gradients
            return contextlib.nullcontext()

    elif setup.dist.enabled:
        # the only buffers are constant rope tables: skip the per-step broadcast (newer torch renamed the flag)
        flag = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      **{flag: False})
        forward = ddp

        def grad_sync(last: bool) -> contextlib.AbstractContextManager:
            return contextlib.nullcontext() if last else ddp.no_sync()  # DDP all-reduces on the last micro-step only

    return replace(setup, forward=setup.rt.compiled(forward), optimizer=optimizer, grad_sync=grad_sync)

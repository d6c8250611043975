"""Building a training run: config -> model, optimizer, loaders, evaluator and state, on one process or many.

Owns `TrainingRun` (everything the loop needs, in one place), `build_run` (the data's tokenizer, a
pretrained start (`model.init_from`), the model, optimizer, loader and evaluator) and `parallelize` (DDP,
or FSDP's shards, on many processes; then `torch.compile`). Does not own resuming or the run directory
(`checkpoints.py`), the loop (`loop.py`), a step (`step.py`) or the file format (`checkpoint.py`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class TrainingRun:
    """A run ready to train: what it computes, where, with what, and how far it got."""

    cfg: Config  # resolved: model.vocab_size filled in, an imported shape applied
    rt: Runtime
    dist: D.DistContext
    run_dir: Path
    tokenizer: Tokenizer
    model: nn.Module  # the plain module: evaluation, clipping and checkpoints use it
    forward: nn.Module  # what a step calls: the model, DDP-wrapped or sharded, possibly compiled
    optimizer: torch.optim.Optimizer | OptimizerSet
    loader: BatchLoader
    evaluator: Evaluator
    grad_sync: Callable[[bool], contextlib.AbstractContextManager] = no_grad_sync
    step: int = 0
    best_val: float = math.inf
    # until the first checkpoint of a run that replaces another (`train --force`), rank 0 writes into a staging
    # directory beside run_dir, which that checkpoint swaps in whole (`checkpoints.py`)
    staging: Path | None = None
    header_pending: bool = True  # config.json and tokenizer.json are written with the first checkpoint
    n_params: int = 0  # recorded in config.json (counted before FSDP shards the model)

    @property
    def write_dir(self) -> Path:
        """Where the run's files go now: the staging directory, or run_dir."""
        return self.staging or self.run_dir

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, over all ranks together."""
        t = self.cfg.train
        return t.batch_size * self.cfg.model.block_size * t.grad_accum_steps


def build_run(cfg: Config, rt: Runtime, dist: D.DistContext, run_dir: Path, pretrained: bool = True) -> TrainingRun:
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
    run = TrainingRun(
        cfg, rt, dist, run_dir, tokenizer, model, model, configure_optimizer(model, t, rt.device),
        loader(cfg.data.dir, "train", block, t.batch_size, rt.device, t.seed, shard),
        Evaluator(cfg.data.dir, block, t.eval_batch_size or t.batch_size, t.eval_iters, rt, t.seed, t.full_val,
                  None if t.fsdp else dist, loader),
        n_params=model.num_params(),
    )
    echo(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters (position embeddings excluded); "
         f"device {rt.device.type}" + (f" x {dist.world_size} processes" if dist.enabled else "") +
         f"; run directory {run_dir}")
    return run


def parallelize(run: TrainingRun, resumed: bool) -> None:
    """Shard the model (FSDP) or wrap it in DDP when there are many processes (one process is left as is),
    then compile what a step calls if asked. Comes after resuming: FSDP shards the restored weights."""
    t, model = run.cfg.train, run.model
    if t.fsdp:  # shard the (possibly resumed) weights, then rebuild the optimizer over the shards
        from .. import fsdp  # torch.distributed.checkpoint takes seconds to import: only when asked for

        names = fsdp.param_names(model)
        plain_params = [p for g in run.optimizer.param_groups for p in g["params"]]
        plain_state = run.optimizer.state_dict() if resumed else None
        fsdp.shard_model(model)
        run.optimizer = configure_optimizer(model, t, run.rt.device)
        if plain_state is not None:
            fsdp.load_optimizer_state(model, run.optimizer, plain_state, plain_params, names)

        def fsdp_sync(last: bool) -> contextlib.AbstractContextManager:
            model.set_requires_gradient_sync(last)  # FSDP's own switch for the reduce-scatter of gradients
            return contextlib.nullcontext()

        run.grad_sync = fsdp_sync
    elif run.dist.enabled:
        # the only buffers are constant rope tables: skip the per-step broadcast (newer torch renamed the flag)
        flag = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        device = run.rt.device
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      **{flag: False})
        run.forward = ddp
        # DDP all-reduces gradients in backward; only the last micro-step needs it
        run.grad_sync = lambda last: contextlib.nullcontext() if last else ddp.no_sync()
    run.forward = run.rt.compiled(run.forward)

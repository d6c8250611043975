"""Many processes: join the group torchrun describes, split batches, agree, reduce, and fail clearly.

Owns `DistContext` (rank, world size, local rank), `world_from_env` (RANK / WORLD_SIZE / LOCAL_RANK as
torchrun sets them), `check_launch` (a config that cannot run on this many processes), `setup` /
`teardown` of the process group (nccl on CUDA, gloo elsewhere, every collective bounded by a timeout),
`shard_bounds` (which rows of a global batch a rank owns), the few collectives the trainer needs (mean of
a float, rank 0's float, any() of flags, sum of tensors, barrier), each rank's torch RNG state for checkpoints
(`rng_states`, `restore_rng`, `rank_seed`), and `collective_errors`, which turns a dead peer or a
timed-out collective into one `DistributedError` sentence instead of a hang or a gloo traceback.
Does not own the training loop or the DDP wrapper (`train/`). Single-process runs never touch
`torch.distributed`: every helper is the identity when the world size is 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import TrainConfig
from .errors import UserError


class DistributedError(UserError):
    """A rendezvous that cannot complete, a rank that died, or a launch that does not fit the config."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name} must be an integer, got {raw!r}") from None


def world_from_env() -> DistContext:
    """Rank, world size and local rank from torchrun's environment (1 process when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world} do not describe a rank of a group")
    return DistContext(rank, world, local)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row global batch owned by rank; equal shares when world divides n."""
    return n * rank // world, n * (rank + 1) // world


def check_launch(t: TrainConfig, ctx: DistContext) -> None:
    """Refuse, before any work, a training config that cannot run on this many processes."""
    if t.batch_size % ctx.world_size:
        raise DistributedError(
            f"train.batch_size ({t.batch_size}) is the global batch and must split evenly over the "
            f"{ctx.world_size} processes; use a multiple of {ctx.world_size}"
        )
    if t.fsdp and not ctx.enabled:
        raise DistributedError("train.fsdp shards the model over several processes; launch with "
                               "`torchrun --nproc_per_node N -m scratchgpt.cli train ...` (N >= 2) or set it false")


def setup(ctx: DistContext, device_type: str, timeout_s: float) -> DistContext:
    """Join the process group for ctx (a no-op for one process); the rendezvous itself is bounded too."""
    if not ctx.enabled:
        return ctx
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is {ctx.world_size} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "set, so the ranks cannot meet; launch with `torchrun --nproc_per_node N -m scratchgpt.cli train ...`"
        )
    if dist.is_initialized():
        if dist.get_world_size() != ctx.world_size:
            raise DistributedError(f"a process group of {dist.get_world_size()} ranks exists but WORLD_SIZE is {ctx.world_size}")
        return ctx
    backend = "nccl" if device_type == "cuda" else "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        raise DistributedError(
            f"rank {ctx.rank} could not meet the other ranks at {where} within {timeout_s:g} s (did all "
            f"{ctx.world_size} ranks start, and is the address reachable?): {_first_line(e)}"
        ) from None
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, owns_group=True)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        with contextlib.suppress(Exception):  # after a peer died the group may be broken: leave anyway
            dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _is_collective_failure(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")
    )


@contextlib.contextmanager
def collective_errors(ctx: DistContext, timeout_s: float) -> Iterator[None]:
    """Inside, a collective that fails because a peer died or hung becomes one DistributedError."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not ctx.enabled or not _is_collective_failure(e):
            raise
        raise DistributedError(
            f"rank {ctx.rank} lost contact with the other ranks (one died, or did not answer within the "
            f"{timeout_s:g} s train.dist_timeout); see the first failing rank's log: {_first_line(e)}"
        ) from None


def comm_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")  # nccl needs CUDA tensors, gloo takes CPU


def mean_float(ctx: DistContext, value: float, device: torch.device) -> float:
    """The mean of a Python float over all ranks."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device(device))
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def broadcast_float(ctx: DistContext, value: float, device: torch.device) -> float:
    """Rank 0's value of a Python float, on every rank."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device(device))
    dist.broadcast(t, src=0)
    return t.item()


def any_flags(ctx: DistContext, flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise any() of boolean flags over all ranks, so every rank takes the same branch."""
    if not ctx.enabled:
        return flags
    t = torch.tensor([float(f) for f in flags], device=comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (and return it)."""
    if ctx.enabled:
        dist.all_reduce(t)
    return t


def gather_bytes(ctx: DistContext, state: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's uint8 tensor (an RNG state, all of one size) on every rank, in rank order."""
    if not ctx.enabled:
        return [state]
    src = state.to(comm_device(device))
    out = [torch.empty_like(src) for _ in range(ctx.world_size)]
    dist.all_gather(out, src)
    return [t.cpu() for t in out]


def barrier(ctx: DistContext, device: torch.device) -> None:
    if ctx.enabled:
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index or 0])
        else:
            dist.barrier()


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of a rank that has no saved RNG state (a new rank after a world-size change)."""
    return (seed * 1_000_003 + rank * 7919 + step) % (2**63)


def restore_rng(extra: dict[str, torch.Tensor], ctx: DistContext, device: torch.device, seed: int,
                step: int) -> None:
    """Rank 0 keeps `rng_cpu` (the single-process key); rank r > 0 its `rng_cpu_rank{r}` if saved, else a seed."""
    suffix = f"_rank{ctx.rank}" if ctx.rank else ""
    if f"rng_cpu{suffix}" in extra:
        torch.set_rng_state(extra[f"rng_cpu{suffix}"])
        if device.type == "cuda" and f"rng_cuda{suffix}" in extra:
            torch.cuda.set_rng_state(extra[f"rng_cuda{suffix}"])
    else:
        torch.manual_seed(rank_seed(seed, ctx.rank, step))


def rng_states(ctx: DistContext, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states, gathered to all ranks (rank 0 writes them)."""
    out = {}
    kinds = [("rng_cpu", torch.get_rng_state())]
    if device.type == "cuda":
        kinds.append(("rng_cuda", torch.cuda.get_rng_state()))
    for key, state in kinds:
        for r, s in enumerate(gather_bytes(ctx, state, device)):
            out[key + (f"_rank{r}" if r else "")] = s
    return out

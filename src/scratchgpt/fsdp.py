"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`) for models that do not fit one GPU.

Owns `shard_model` (each Transformer block, then the whole model, sharded over the ranks), `gather_state`
(full model and optimizer state dicts, gathered on every rank, with the optimizer's state keyed by the
same parameter numbers a plain optimizer uses, so `checkpoint.py` writes the usual file and a sharded run
resumes unsharded and the other way round) and `load_optimizer_state`. Does not own when to save
(train.py) or the file format (checkpoint.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: nn.Module) -> nn.Module:
    """Shard every block, then the rest (embeddings, final norm, head) as the root unit."""
    for block in getattr(model, "h", []):
        fully_shard(block)
    fully_shard(model)
    return model


class Snapshot:
    """A gathered state dict that `checkpoint.py` can save as if it were a module or an optimizer."""

    def __init__(self, state: dict[str, Any]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name (a tied matrix keeps its first name)."""
    return {id(p): n for n, p in model.named_parameters()}


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Snapshot, Snapshot]:
    """Full (unsharded, CPU) model and optimizer states on rank 0 (empty elsewhere); every rank must call it."""
    weights = get_model_state_dict(model, options=FULL)
    full = get_optimizer_state_dict(model, optimizer, options=FULL)  # keyed by parameter name
    if "param_groups" not in full:  # with cpu_offload only rank 0 receives the gathered state
        return Snapshot(weights), Snapshot({})
    number: dict[str, int] = {}
    groups = []
    for g in full["param_groups"]:
        ids = [number.setdefault(name, len(number)) for name in g["params"]]
        groups.append({**g, "params": ids})
    state = {number[name]: s for name, s in full["state"].items()}
    return Snapshot(weights), Snapshot({"state": state, "param_groups": groups})


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any],
                         plain_params: list[nn.Parameter], names: dict[int, str]) -> None:
    """Load a plain optimizer's state_dict (numbered over plain_params) into a sharded model's optimizer."""
    name_of = [names[id(p)] for p in plain_params]
    full = {
        "state": {name_of[i]: s for i, s in plain["state"].items()},
        "param_groups": [{**g, "params": [name_of[i] for i in g["params"]]} for g in plain["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))

"""Optimizers and the learning-rate schedule.

Owns `configure_optimizer` (AdamW alone, or Muon for the hidden matrices plus AdamW for the rest),
`OptimizerSet` (several torch optimizers stepped and checkpointed as one), `Muon` (torch.optim.Muon's algorithm
with the orthogonalization's dtype chosen by the hardware), `lr_at` (warmup then cosine or linear decay) and
`set_lr`. AdamW is `torch.optim.AdamW`.
Does not own the training loop (train.py) or the file format (checkpoint.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .config import TrainConfig
from .errors import ConfigError
from .runtime import cpu_has_native_bf16


class OptimizerSet:
    """Optimizers that step together; `state_dict` numbers parameters across all of them in order, so a
    checkpoint reads like one optimizer's (the format `checkpoint.py` writes)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            for idx, s in sd["state"].items():
                state[idx + offset] = s
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]]})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        groups, first, offset = sd["param_groups"], 0, 0
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the checkpoint has {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        for o in self.optimizers:
            mine = groups[first:first + len(o.param_groups)]
            first += len(o.param_groups)
            n = sum(len(g["params"]) for g in mine)
            o.load_state_dict({
                "state": {i - offset: s for i, s in sd["state"].items() if offset <= i < offset + n},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine],
            })
            offset += n


def _adamw(groups: list[dict[str, Any]], t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=device.type == "cuda")


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz, as torch.optim.Muon uses


def orthogonalize(update: torch.Tensor, dtype: torch.dtype, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iterations towards the nearest semi-orthogonal matrix (U V^T of the update's SVD, with
    singular values left near 1), computed in `dtype`: torch.optim.Muon's iteration, step for step. `update`
    is one matrix (R, C) or a stack of them (N, R, C), each orthogonalized on its own."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = update.size(-2) > update.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x if x.dim() == 3 else torch.addmm(
            x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D matrices: Nesterov momentum, the update orthogonalized by Newton-Schulz, decoupled weight
    decay, the lr scaled by sqrt(max(1, rows / cols)); the algorithm and state of torch.optim.Muon. Written out
    here because torch's iterates in bf16 only, which is right on GPUs and CPUs with native bf16 and about 15x
    slower than fp32 on a CPU that emulates it (and torch before 2.9 has none): `ns_dtype` chooses."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": True})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for p in params:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mu)
                updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
            if self.ns_dtype == torch.bfloat16:  # one matrix at a time: exactly torch.optim.Muon's arithmetic
                updates = [orthogonalize(u, self.ns_dtype) for u in updates]
            else:  # matrices of one shape (the same layer in every block) orthogonalized as one batch
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for i, u in enumerate(updates):
                    by_shape.setdefault(tuple(u.shape), []).append(i)
                for idx in by_shape.values():
                    for i, o in zip(idx, orthogonalize(torch.stack([updates[i] for i in idx]), self.ns_dtype),
                                    strict=True):
                        updates[i] = o
            for p, update in zip(params, updates, strict=True):
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))


def build_muon(named: list[tuple[str, nn.Parameter]], t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Muon over matrices only (anything else is a ConfigError naming the parameter), orthogonalizing in bf16
    where the device computes it natively and in fp32 elsewhere."""
    if not named:
        raise ConfigError("train.optimizer = muon needs hidden weight matrices, and this model has none "
                          "(the bigram model is one table); use train.optimizer = adamw")
    for name, p in named:
        if p.dim() != 2:
            raise ConfigError(f"Muon orthogonalizes 2-D matrices, but '{name}' is {p.dim()}-D {tuple(p.shape)}; "
                              "give 1-D parameters (norms, biases) and embeddings to AdamW")
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return Muon([{"params": [p for _, p in named], "muon": True}], lr=t.muon_lr, weight_decay=t.weight_decay,
                momentum=t.muon_momentum, ns_dtype=torch.bfloat16 if native else torch.float32)


def muon_matrices(named: list[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    """What Muon takes with train.optimizer = muon: the 2-D weights inside the Transformer blocks."""
    return [(n, p) for n, p in named if n.startswith("h.") and p.dim() == 2]


def configure_optimizer(model: nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer | OptimizerSet:
    """AdamW with weight decay on matrices (embeddings, linear weights) only; biases and norms are not decayed.

    With train.optimizer = muon, the 2-D weights inside the Transformer blocks go to Muon (lr
    train.muon_lr) and the embeddings, head, norms and biases stay with AdamW (lr train.learning_rate).
    """
    seen: set[int] = set()
    named = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:  # a tied matrix appears once
            seen.add(id(p))
            named.append((name, p))
    muon: list[tuple[str, nn.Parameter]] = []
    if t.optimizer == "muon":
        muon = muon_matrices(named)
        muon_opt = build_muon(muon, t, device)
    rest = [p for n, p in named if all(p is not q for _, q in muon)]
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = _adamw(groups, t, device)
    return OptimizerSet([adamw, muon_opt]) if muon else adamw


def lr_at(step: int, t: TrainConfig, time_frac: float | None = None) -> float:
    """Linear warmup from 0 to learning_rate, then cosine (or linear) decay to min_lr, then flat.

    `wsd` (warmup-stable-decay) holds learning_rate and decays linearly over the last `cooldown_frac` of the span.

    With `time_frac` (the share of train.time_limit used so far, for train.schedule_by_time), the decay
    is as far along as the larger of the step's and the clock's progress, so it ends by the deadline.
    """
    if t.lr_schedule == "constant":
        return t.learning_rate
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    decay_iters = t.lr_decay_iters or t.max_iters
    frac = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    if time_frac is not None:
        frac = max(frac, time_frac)
    if frac >= 1.0:
        return t.min_lr
    if t.lr_schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * frac))
    elif t.lr_schedule == "wsd":
        coeff = min(1.0, (1.0 - frac) / t.cooldown_frac)
    else:
        coeff = 1.0 - frac
    return t.min_lr + coeff * (t.learning_rate - t.min_lr)


def set_lr(optimizer: torch.optim.Optimizer | OptimizerSet, step: int, t: TrainConfig,
           time_frac: float | None = None) -> float:
    """Apply the schedule to every group (Muon's groups scaled to train.muon_lr); return AdamW's lr."""
    lr = lr_at(step, t, time_frac)
    for group in optimizer.param_groups:
        group["lr"] = lr * (t.muon_lr / t.learning_rate) if group.get("muon") else lr
    return lr

"""How much memory a model needs, from its config alone, and refusing one that cannot fit before it is built.

Owns `count_params` (exact: the model built on the meta device, which holds shapes and no memory), `train_bytes` (weights + gradients +
optimizer state per parameter, plus a rough lower bound on the activations of one micro-batch and its logits),
`weights_bytes` (what loading for sampling needs), `machine_bytes` (RAM from sysconf, capped by a cgroup
limit; a CUDA device's total memory) and the two checks the trainer, `bench` and `load_model` call right
before they build a model: `check_train` and `check_weights`. A refusal is one sentence naming the
estimate and what the machine has.

The estimates are deliberately low (activations count only ~16 stored values per token per layer and no
attention matrix; no allocator slack): a refusal means the run cannot fit, while a run that passes may still
need more. Does not own devices (the caller passes one) or models.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .config import Config
from .errors import ConfigError, UserError
from .models import GPT, ModelConfig, build_model
from .optim import muon_matrices

ADAMW_STATE = 8  # exp_avg + exp_avg_sq, fp32
MUON_STATE = 4  # momentum, fp32
ACTIVATIONS_PER_TOKEN_LAYER = 16  # x n_embd stored values: norms, q k v, attention out, MLP in/out (4C each)...
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _on_meta(m: ModelConfig) -> tuple[nn.Module, int]:
    """The model with one Transformer block, built on the meta device (shapes only: nothing is allocated,
    whatever the size), and how many more times that block repeats in the real model."""
    with torch.device("meta"):
        model = build_model(dataclasses.replace(m, n_layer=1))
    return model, (m.n_layer - 1 if isinstance(model, GPT) else 0)


def _params_of(named: list[tuple[str, nn.Parameter]], repeats: int) -> int:
    """Parameters of a one-block meta model scaled to the real depth (every block has the same shapes)."""
    return sum(p.numel() * (1 + (repeats if n.startswith("h.") else 0)) for n, p in named)


def count_params(m: ModelConfig) -> int:
    """Parameters of the model a (resolved) `ModelConfig` describes, a tied head counted once."""
    model, repeats = _on_meta(m)
    return _params_of(list(model.named_parameters()), repeats)


def _muon_params(m: ModelConfig) -> int:
    """What Muon holds (the blocks' 2-D weights): one momentum each instead of AdamW's two moments."""
    model, repeats = _on_meta(m)
    return _params_of(muon_matrices(list(model.named_parameters())), repeats)


@dataclass(frozen=True)
class Estimate:
    params: int
    states: int  # weights + gradients + optimizer state, bytes
    activations: int  # one micro-batch's activations and logits, bytes

    @property
    def total(self) -> int:
        return self.states + self.activations


def train_bytes(cfg: Config, device_type: str = "cpu", world_size: int = 1) -> Estimate:
    """A lower bound on one training process's memory. With train.fsdp the states are split over the ranks;
    the global batch is always split (each rank runs batch_size / world_size rows per micro-step)."""
    m, t = cfg.model, cfg.train
    n = count_params(m)
    muon = _muon_params(m) if t.optimizer == "muon" else 0
    states = 4 * n + 4 * n + ADAMW_STATE * (n - muon) + MUON_STATE * muon  # fp32 weights, grads, moments
    if t.fsdp:
        states //= max(world_size, 1)
    half = device_type == "cuda" and t.dtype in ("auto", "bfloat16")  # autocast stores bf16 activations
    elem = 2 if half else 4
    rows = max(t.batch_size // max(world_size, 1), 1)
    tokens = rows * m.block_size
    layers = 0 if m.arch == "bigram" else m.n_layer
    acts = tokens * (ACTIVATIONS_PER_TOKEN_LAYER * m.n_embd * layers) * elem
    acts += tokens * m.vocab_size * 4  # the logits, in fp32 for the loss
    return Estimate(n, states, acts)


def weights_bytes(m: ModelConfig) -> int:
    """What building the model for sampling takes: fp32 weights (on CPU first, whatever the device)."""
    return 4 * count_params(m)


def ram_bytes() -> int | None:
    """Physical memory, or the cgroup's limit when that is lower; None when the platform does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total if total > 0 else None


def machine_bytes(device: torch.device) -> tuple[int | None, str]:
    """(bytes, a phrase naming them) for a device: CUDA's total memory, else the machine's RAM."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"{props.name} has"
    return ram_bytes(), "this machine has"


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def _params(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:,.1f}{unit}"
    return str(n)


SHRINK = "use fewer or narrower layers (model.n_layer, model.n_embd) or a smaller train.batch_size or model.block_size"


def check_train(cfg: Config, device: torch.device, world_size: int = 1) -> Estimate:
    """Refuse, before anything is allocated, a training run whose estimate exceeds the device's memory
    (and, on an accelerator, whose fp32 weights alone exceed the RAM they are first built in)."""
    kind = device.type
    est = train_bytes(cfg, kind, world_size)
    have, who = machine_bytes(device)
    if have is not None and est.total > have:
        raise ConfigError(
            f"the model needs about {fmt_bytes(est.total)} to train ({_params(est.params)} parameters: "
            f"{fmt_bytes(est.states)} for weights, gradients and optimizer state, plus {fmt_bytes(est.activations)} "
            f"of activations) but {who} {fmt_bytes(have)}{' of RAM' if kind != 'cuda' else ''}; {SHRINK}")
    if kind not in ("cpu", "mps"):
        _check_weights(weights_bytes(cfg.model), est.params, "RAM to build", ram_bytes(), "this machine has", SHRINK)
    return est


def check_weights(m: ModelConfig, device: torch.device) -> int:
    """Refuse, before anything is allocated, a model whose weights cannot be built to sample from: in RAM
    (where they are built) and on a CUDA device (where they go in float32 before any cast)."""
    need, n = weights_bytes(m), count_params(m)
    hint = "it needs a machine with more memory"
    _check_weights(need, n, "RAM to load", ram_bytes(), "this machine has", hint)
    if device.type == "cuda":
        _check_weights(need, n, "of device memory", *machine_bytes(device), hint)
    return need


def _check_weights(need: int, params: int, what: str, have: int | None, who: str, hint: str) -> None:
    if have is not None and need > have:
        raise UserError(f"the model's weights need about {fmt_bytes(need)} {what} ({_params(params)} parameters in "
                        f"float32) but {who} {fmt_bytes(have)}; {hint}")

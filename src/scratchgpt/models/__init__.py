"""Model zoo: `ModelConfig` (a GPT's shape and switches, plus which architecture and where weights start)
and `build_model`, the mapping from that config to a module (`arch` = gpt | bigram).

Owns the mapping from config to module, and the state-dict shapes a config implies (`expected_shapes`).
Does not own weights I/O (see `checkpoint.py`) or loading pretrained weights (`interop/hf.py` reads
`init_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from .bigram import BigramLanguageModel
from .gpt import GPT, GPTConfig


@dataclass(frozen=True)
class ModelConfig(GPTConfig):
    """The `[model]` section of a recipe: a `GPTConfig` and the architecture to build from it."""

    arch: Literal["gpt", "bigram"] = "gpt"
    # "" trains from random weights; gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a local Hugging Face GPT-2
    # directory starts from those weights: the shape comes from the checkpoint, and the recipe keeps only
    # model.dropout and model.block_size (at most the checkpoint's; the position table is cropped to it)
    init_from: str = ""


ARCHS: dict[str, Callable[[ModelConfig], nn.Module]] = {  # ModelConfig.arch -> the module it builds
    "gpt": GPT,
    "bigram": lambda cfg: BigramLanguageModel(cfg.vocab_size, cfg.block_size, cfg.init_scheme, cfg.init_std),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the module a (resolved) model config describes."""
    return ARCHS[cfg.arch](cfg)


@dataclass(frozen=True)
class StateShapes:
    """The state dict a config describes: every name's shape, and which names are another name's very tensor
    (a tied head: a checkpoint may hold it under its first name only, or under both)."""

    shapes: dict[str, tuple[int, ...]]
    tied: frozenset[str]


def expected_shapes(cfg: ModelConfig) -> StateShapes:
    """The state dict's names and shapes for cfg, from the model built on the meta device: no memory, no init
    cost (but one module per layer: check a layer count against the weights first when it may be damaged)."""
    with torch.device("meta"):
        model = build_model(cfg)
    shapes: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    tied = set()
    for name, t in model.state_dict(keep_vars=True).items():
        shapes[name] = tuple(t.shape)
        if id(t) in seen:  # a tied head is wte's very Parameter
            tied.add(name)
        seen.add(id(t))
    return StateShapes(shapes, frozenset(tied))


__all__ = ["GPT", "GPTConfig", "BigramLanguageModel", "ModelConfig", "StateShapes", "build_model", "expected_shapes"]

"""Model zoo: `ModelConfig` (a GPT's shape and switches, plus which architecture and where weights start)
and `build_model`, the mapping from that config to a module (`arch` = gpt | bigram).

Owns the mapping from config to module. Does not own weights I/O (see `checkpoint.py`) or loading
pretrained weights (`interop/hf.py` reads `init_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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


__all__ = ["GPT", "GPTConfig", "BigramLanguageModel", "ModelConfig", "build_model"]

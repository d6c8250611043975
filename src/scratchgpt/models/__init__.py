"""Model zoo: build a model from a `ModelConfig` (`arch` = gpt | bigram).

Owns the mapping from config to module. Does not own weights I/O (see `checkpoint.py`).
"""

from __future__ import annotations

import torch.nn as nn

from .bigram import BigramLanguageModel
from .gpt import GPT, GPTConfig


def build_model(cfg: GPTConfig) -> nn.Module:
    """Instantiate the module a (resolved) model config describes."""
    if getattr(cfg, "arch", "gpt") == "bigram":
        return BigramLanguageModel(cfg.vocab_size, cfg.block_size, cfg.init_scheme, cfg.init_std)
    return GPT(cfg)


__all__ = ["GPT", "GPTConfig", "BigramLanguageModel", "build_model"]

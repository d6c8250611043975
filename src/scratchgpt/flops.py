"""Arithmetic cost of training a GPT, and model FLOPs utilisation (MFU).

Owns `matmul_params`, `flops_per_token` (the PaLM appendix estimate, 6N + 12 L H Q T) and `mfu`. The
peak a figure is measured against is always the user's (`train.peak_flops`, `scratchgpt bench
--peak-flops`): no card's number lives in the code. Does not own timing (train.py, bench.py do).
"""

from __future__ import annotations

import torch.nn as nn

from .models.gpt import GPTConfig


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matrix multiply: all of them but the position table, and the token
    table only when it is also the LM head (an untied table is a lookup, not a matmul)."""
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    wpe, wte, head = getattr(model, "wpe", None), getattr(model, "wte", None), getattr(model, "lm_head", None)
    if wpe is not None:
        n -= wpe.weight.numel()
    if wte is not None and head is not None and head.weight is not wte.weight:
        n -= wte.weight.numel()
    return n


def flops_per_token(cfg: GPTConfig, n_params: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 per matmul parameter (forward 2, backward 4) plus attention's
    12 * layers * heads * head_dim * context (the score and value products, forward and backward)."""
    if getattr(cfg, "arch", "gpt") != "gpt":  # the bigram model has no attention
        return 6.0 * n_params
    T = seq_len or cfg.block_size
    head_dim = cfg.n_embd // cfg.n_head if cfg.n_head else 0
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_head * head_dim * T


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Achieved FLOP/s as a fraction of peak_flops (0 when no peak is given)."""
    return tokens_per_s * flops_per_tok / peak_flops if peak_flops > 0 else 0.0

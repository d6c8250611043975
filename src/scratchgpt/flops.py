"""Arithmetic cost of training a GPT, and model FLOPs utilisation (MFU).

Owns `matmul_params`, `flops_per_token` (the PaLM appendix estimate, 6N + 12 L H Q T) and `mfu`. The
peak a figure is measured against is always the user's (`train.peak_flops`, `scratchgpt bench
--peak-flops`): no card's number lives in the code. Does not own timing (train.py, bench.py do).
"""

from __future__ import annotations

import torch.nn as nn

from .models import GPT, ModelConfig


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matrix multiply: all of a GPT's but the position table, and the token
    table only when it is also the LM head (an untied table is a lookup, not a matmul); every parameter of
    another model (the bigram's table)."""
    n = sum(p.numel() for p in model.parameters())  # a tied matrix is one parameter, counted once
    if isinstance(model, GPT):
        if model.wpe is not None:
            n -= model.wpe.weight.numel()
        if model.lm_head.weight is not model.wte.weight:
            n -= model.wte.weight.numel()
    return n


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 per matmul parameter (forward 2, backward 4) plus attention's
    12 * layers * heads * head_dim * context (the score and value products, forward and backward)."""
    if cfg.arch != "gpt":  # the bigram model has no attention
        return 6.0 * n_params
    T = seq_len or cfg.block_size
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_embd * T  # heads x head_dim = n_embd


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Achieved FLOP/s as a fraction of peak_flops (0 when no peak is given)."""
    return tokens_per_s * flops_per_tok / peak_flops if peak_flops > 0 else 0.0

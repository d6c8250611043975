"""Sampling text from a trained model.

Owns the sampling policy (temperature, top-k, seed) and `stream`, a generator that yields text as each
token is produced. Past the block size the context is cropped to the last `block_size` tokens, as the
lecture does. Does not own tokenization rules beyond calling the tokenizer, nor model code.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .errors import UserError

MAX_NEW_TOKENS_CAP = 100_000


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS_CAP:
        raise UserError(f"max new tokens must be between 0 and {MAX_NEW_TOKENS_CAP}, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must not be negative, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise UserError(f"top-k must be positive, got {top_k}")


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab): greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate_ids(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new token ids one at a time, re-running the model on the last block each step."""
    block_size = model.config.block_size if hasattr(model, "config") else model.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:], last_only=True)  # (B, 1, vocab)
        nxt = next_token(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat((idx, nxt), dim=1)
        yield nxt


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Encode a prompt; an empty one starts from a newline (the corpus's first token) or token 0."""
    if prompt == "":
        return tokenizer.encode("\n") if "\n" in getattr(tokenizer, "stoi", {}) else [0]
    return tokenizer.encode(prompt)


def stream(model: nn.Module, tokenizer, prompt: str = "", max_new_tokens: int = 500, temperature: float = 1.0,
           top_k: int | None = None, seed: int | None = None) -> Iterator[str]:
    """Yield decoded text piece by piece as the model writes it (the prompt itself is not repeated)."""
    check_sampling_args(max_new_tokens, temperature, top_k)
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids(tokenizer, prompt)], dtype=torch.long, device=device)  # (1, T)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    for nxt in generate_ids(model, idx, max_new_tokens, temperature, top_k, gen):
        yield tokenizer.decode(nxt[0].tolist())


def generate(model: nn.Module, tokenizer, prompt: str = "", **kwargs) -> str:
    """The whole continuation as one string."""
    return "".join(stream(model, tokenizer, prompt, **kwargs))

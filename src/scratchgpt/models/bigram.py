"""The lecture's baseline: a bigram language model (each token's row of a table is the next token's logits).

Owns `BigramLanguageModel`. Pure like `gpt.py`: no I/O, no printing, no devices.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BigramLanguageModel(nn.Module):
    """A vocab x vocab embedding table read straight out as logits."""

    def __init__(self, vocab_size: int, block_size: int = 8, init_scheme: str = "gpt2", init_std: float = 0.02):
        super().__init__()
        self.block_size = block_size  # only bounds the context the sampler feeds; a bigram looks at one token
        self.vocab_size = vocab_size
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)  # PyTorch's default: N(0, 1)
        if init_scheme == "gpt2":
            # near-zero logits: every next token equally likely, so the first loss is ln(vocab) (4.17 for 65);
            # the video keeps N(0, 1) (init_scheme = "torch") and starts higher, at about 4.9
            nn.init.normal_(self.token_embedding_table.weight, mean=0.0, std=init_std)

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, heads, head size) of a KV cache: none, since a bigram attends to nothing before its token."""
        return 0, 1, 1

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None, attn_mask=None,
                positions=None, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The GPT's signature, so the generation engine drives both alike; the cache, mask and positions
        concern attention, which a bigram does not have."""
        if last_only:
            idx = idx[:, -1:]
        logits = self.token_embedding_table(idx)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

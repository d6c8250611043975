"""The GPT model: config, modules, initialisation, forward. Pure: no I/O, no printing, no devices.

Owns `GPTConfig`, `CausalSelfAttention`, `MLP`, `Block` and `GPT`, written by hand because they are the
point of the project, and the config's choices: each a Literal type (the one list of its values: the config
refuses any other when it is made, and the recipe checks in `config.py` derive from it) with a table from
value to the module or function it builds (`NORMS`, `ACTIVATIONS`, `BIAS_LAYERS`). The defaults are nanoGPT's model (learned positions, pre-LayerNorm, 4x GELU MLP,
tied head, no biases); the lecture's final model is the same architecture with `mlp = "relu"`, an
untied head and `bias = "lecture"`. Switches let the lecture's earlier steps (no MLP or a one-layer one,
no residual, no norm, no attention output projection) and modern variants (rotary positions, RMSNorm,
QK-norm, ReLU^2) be built from the same code.
Does not own sampling policy, the KV cache's storage (the engine passes a cache object in), or weights I/O.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal, Protocol, get_args, get_origin, get_type_hints

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import closest

# The choices of GPTConfig, declared once: a config holding anything else is refused when it is built, and the
# recipe checks in config.py are derived from these types. The tables after the modules below map each to
# the module or function it builds.
Bias = Literal["none", "gpt2", "lecture"]
PosEmb = Literal["learned", "rope", "none"]
Norm = Literal["layernorm", "rmsnorm", "none"]
Activation = Literal["gelu", "gelu_tanh", "relu", "relu2", "none"]  # none: no MLP at all
InitScheme = Literal["gpt2", "torch"]
Attention = Literal["sdpa", "manual"]


@dataclass(frozen=True)
class GPTConfig:
    """Shape and switches of a GPT. `vocab_size` 0 means "take it from the prepared data"."""

    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    vocab_size: int = 0
    dropout: float = 0.0
    # which layers carry a bias: none | gpt2 (every Linear and LayerNorm, but not the head) | lecture (the
    # video's pattern: none on key/query/value, one on the attention and MLP projections, the LayerNorms and
    # the head). true / false, as older config.json files hold, mean gpt2 / none.
    bias: Bias = "none"
    tie_weights: bool = True
    pos_emb: PosEmb = "learned"
    norm: Norm = "layernorm"
    mlp: Activation = "gelu"  # gelu_tanh: GPT-2's tanh approximation; relu2: squared ReLU
    mlp_proj: bool = True  # 4x expansion + output projection; off: one Linear(C, C), the lecture's first MLP
    residual: bool = True
    attn_proj: bool = True  # output projection after attention (the lecture adds it with residuals)
    qk_norm: bool = False
    rope_base: float = 10000.0
    init_scheme: InitScheme = "gpt2"  # gpt2 (reset_parameters) | torch: PyTorch's defaults, as in the lecture's video
    init_std: float = 0.02
    # how attention is computed (the same function either way): sdpa, torch's fused scaled_dot_product_attention,
    # or manual, the lecture's softmax(Q K^T / sqrt(d)) V written out (slower; for reading and checking)
    attention: Attention = "sdpa"

    def __post_init__(self) -> None:
        if isinstance(self.bias, bool):  # the switch was a bool before it was a choice
            object.__setattr__(self, "bias", "gpt2" if self.bias else "none")
        for name, allowed in self.choices().items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{type(self).__name__}.{name} must be one of {', '.join(allowed)}, got "
                                 f"{value!r}{closest(str(value), allowed)}")

    @classmethod
    @functools.cache
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """The allowed values of each choice field (its Literal type), by field name."""
        hints = get_type_hints(cls)
        return {f.name: get_args(hints[f.name]) for f in fields(cls) if get_origin(hints[f.name]) is Literal}

    def has_bias(self, where: Literal["qkv", "proj", "norm", "head"]) -> bool:
        """Whether the layers at `where` carry a bias under `bias` (qkv: key/query/value; proj: the attention and
        MLP Linears after them; norm: the LayerNorms; head: the output layer)."""
        return where in BIAS_LAYERS[self.bias]


BIAS_LAYERS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "gpt2": frozenset({"qkv", "proj", "norm"}),
    "lecture": frozenset({"proj", "norm", "head"}),
}


class KVCacheLike(Protocol):
    """What attention needs from a key/value cache (the engine in `generate.py` provides one)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def pos(self) -> int: ...


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


NORMS: dict[str, Callable[[int, bool], nn.Module]] = {  # GPTConfig.norm -> (dim, bias) -> module
    "layernorm": lambda dim, bias: nn.LayerNorm(dim, bias=bias),
    "rmsnorm": lambda dim, bias: RMSNorm(dim),
    "none": lambda dim, bias: nn.Identity(),
}


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")  # GPT-2's "gelu_new": imported GPT-2 weights need it to match exactly


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # GPTConfig.mlp -> the non-linearity
    "gelu": F.gelu, "gelu_tanh": gelu_tanh, "relu": F.relu, "relu2": relu2,
}


def rope_tables(head_dim: int, length: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (length, head_dim // 2), for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (B, nh, T, hs) by position-dependent angles (T, hs/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: every position attends to itself and the past only."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        # q, k, v for all heads at once; the lecture's key, query and value have no bias, GPT-2's do
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.has_bias("qkv"))
        # without it the heads' outputs go on concatenated, as in the lecture before residuals
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.has_bias("proj")) if cfg.attn_proj else None
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.manual = cfg.attention == "manual"
        self.attn_dropout = nn.Dropout(cfg.dropout)  # the manual path's dropout on attention weights
        self.q_norm = RMSNorm(self.head_dim) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCacheLike | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dtype = q.dtype
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs): the past and these T positions
            q = q.to(k.dtype)  # a cache may hold keys wider than the activations (the engine's on a CPU does)
        S = k.size(2)
        if attn_mask is None and S != T:  # T new queries after S - T cached keys: query i sees keys <= S - T + i
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        if self.manual:
            # the lecture's attention: affinities Q K^T scaled by 1/sqrt(hs) so they keep unit variance (a softmax
            # of large scores would be nearly one-hot at init), the future masked out, softmax, then a weighted
            # sum of the values
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, S)
            if attn_mask is None:
                attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()  # causal: key j <= query i
            att = att.masked_fill(~attn_mask, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))  # each row sums to 1 over the keys it may see
            y = att @ v  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)
        else:
            # the same computation, fused (flash / memory-efficient kernels where the hardware has them)
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop,
                                               is_causal=attn_mask is None)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C).to(dtype)  # re-assemble heads side by side: (B, T, C)
        if self.c_proj is not None:
            y = self.c_proj(y)  # (B, T, C)
        return self.resid_dropout(y)


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, non-linearity, project back."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = 4 * cfg.n_embd if cfg.mlp_proj else cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.has_bias("proj"))
        # without it the MLP is the lecture's first feed-forward (its step 4): Linear(C, C) and the non-linearity
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.has_bias("proj")) if cfg.mlp_proj else None
        self.act = ACTIVATIONS[cfg.mlp]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c_fc(x))  # (B, T, 4C), or (B, T, C) without the projection
        if self.c_proj is not None:
            h = self.c_proj(h)  # (B, T, C)
        return self.dropout(h)


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each pre-normed and added to the residual."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        norm = NORMS[cfg.norm]
        self.ln_1 = norm(cfg.n_embd, cfg.has_bias("norm"))
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm(cfg.n_embd, cfg.has_bias("norm")) if cfg.mlp != "none" else None
        self.mlp = MLP(cfg) if cfg.mlp != "none" else None
        self.residual = cfg.residual

    def forward(self, x: torch.Tensor, rope=None, cache: KVCacheLike | None = None, layer: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), rope, cache, layer, attn_mask)  # (B, T, C)
        x = x + a if self.residual else a
        if self.mlp is not None:
            m = self.mlp(self.ln_2(x))  # (B, T, C)
            x = x + m if self.residual else m
        return x


class GPT(nn.Module):
    """Decoder-only Transformer language model."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (> 0)")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = NORMS[cfg.norm](cfg.n_embd, cfg.has_bias("norm"))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.has_bias("head"))  # GPT-2's head has none
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads tokens in and writes them out
        if cfg.pos_emb == "rope":
            # built where the weights are (the CPU; the meta device when memory.py counts parameters)
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base, self.wte.weight.device)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.init_scheme == "gpt2":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, heads, head size): what a KV cache holds per position for this model."""
        return self.config.n_layer, self.config.n_head, self.config.n_embd // self.config.n_head

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (the tied token table counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCacheLike | None = None,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab) and the mean cross-entropy when targets are given.

        With a cache, idx holds the T positions after the `cache.pos` already cached. `positions` (T,) or
        (B, T) overrides the absolute positions (the engine uses it for batched prompts); `attn_mask` (B|1, 1, T, S)
        replaces the causal mask. `last_only` computes logits for the last position only.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if positions is None:
            if start + T > self.config.block_size:
                raise ValueError(f"sequence of {start + T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)  # (B, T, C) + (T, C)
        x = self.drop(x)
        rope = None
        if self.config.pos_emb == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])  # each (T, hs/2) or (B, T, hs/2)
            if positions.dim() == 2:  # per-row positions: broadcast over heads
                rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))  # each (B, 1, T, hs/2)
        for i, block in enumerate(self.h):
            x = block(x, rope, cache, i, attn_mask)
        x = self.ln_f(x)  # (B, T, C)
        if targets is None:
            logits = self.lm_head(x[:, -1:, :] if last_only else x)  # (B, T|1, vocab)
            return logits, None
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

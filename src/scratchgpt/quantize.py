"""Weight-only int8 for inference: every Linear's weight stored as int8 with one scale per output channel.

Owns `QUANTIZE` (the choices: none | int8), `quantize(model, how)` (swaps every `nn.Linear` of a model, the LM
head included, for an `Int8Linear` in place; embeddings, norms and biases keep the model's dtype) and
`Int8Linear`. Does not own when it applies (`runtime.Runtime.prepare`, the one inference path of sample, the
API, chat, eval and serve) or training (a quantized model is for inference only).

Why int8: decoding one token at batch 1 reads every weight once, so a CPU decodes at most (memory bandwidth /
bytes of weights) tokens per second; int8 weights are a quarter of fp32's bytes and half of bf16's.

The numbers. Row i of a weight matrix W (out x in) is stored as q_i = round(W_i / s_i) in [-127, 127] with
s_i = max_j |W_ij| / 127 (symmetric, per output channel; the scale of an all-zero row is 1), so each weight is
off by at most s_i / 2. A layer computes y = x (q * s)^T + b = (x q^T) * s + b.

The kernel is PyTorch's own: `torch.ops.aten._weight_int8pack_mm(x, q, s)` computes (x q^T) * s without ever
materialising the dequantized matrix (the CPU kernel that torchao's int8 weight-only path also lowers to). It
is fast with bf16 activations and slow with fp32 ones (a scalar loop in torch 2.13), and it reads rows in
blocks of 16, so it needs the input width to be a multiple of 32 here (to be safe on every vector width; a
width that is not crashes the process rather than raising). So `Int8Linear` feeds it bf16 activations and
returns the model's dtype; elsewhere (another width, a device or torch without the kernel) it dequantizes per
call: the same numbers up to rounding, not the same speed. Hand-written kernels were not needed: see
docs/benchmarks.md for how close to the machine's bandwidth this gets.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpu_linear import CPULinear, swap_linears

QUANTIZE = ("none", "int8")
_KERNEL_WIDTH = 32  # the kernel's input width must be a multiple of this


def _has_kernel(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with a per-output-channel scale: y = (x q^T) * scale + bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1) / 127.0  # (out,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))  # (out, in)
        dtype = linear.weight.dtype
        self.register_buffer("scale", scale.to(dtype))  # (out,)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self._choose_kernel()

    def _choose_kernel(self) -> None:
        """Whether the kernel applies where the weights now are, and (then) the bf16 scales it reads, made once
        here rather than at every call (a plain attribute, not state: remade from `scale` after every move)."""
        self.kernel = _has_kernel(self.qweight.device) and self.in_features % _KERNEL_WIDTH == 0
        self._kernel_scale = self.scale.to(torch.bfloat16) if self.kernel else None

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, (out, in), in the scale's dtype."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel and x.device.type == "cpu":
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in): the kernel's fast path
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self._kernel_scale)  # (N, out)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._choose_kernel()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)  # copies into `scale` in place: remake its bf16 copy
        self._choose_kernel()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, kernel={self.kernel}"


def quantize(model: nn.Module, how: str = "int8") -> nn.Module:
    """Swap every nn.Linear of `model` for its int8 version, in place ("none": leave it as it is); a head tied
    to the token embedding gets its own int8 copy (the embedding table stays as it was, for lookups)."""
    if how not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {how!r}")
    if how == "none":
        return model
    return swap_linears(model, Int8Linear, exact=False).eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decode step reads: every matrix multiplied (Linear or Int8Linear, with its
    scales and biases), norms and the position rows are small; the embedding table is only looked up."""
    total = 0
    for m in model.modules():
        if isinstance(m, Int8Linear):
            total += m.qweight.numel() + m.scale.numel() * m.scale.element_size()
        elif isinstance(m, CPULinear):
            w = m.packed if m.packed is not None else m.weight
            total += m.in_features * m.out_features * w.element_size()
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        else:
            continue
        if m.bias is not None:
            total += m.bias.numel() * m.bias.element_size()
    return total


__all__ = ["QUANTIZE", "Int8Linear", "quantize", "weight_bytes"]

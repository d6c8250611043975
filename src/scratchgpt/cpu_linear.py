"""How a Linear layer multiplies on a CPU at inference: the kernel that measured fastest for its dtype.

Owns `CPULinear` and `use_cpu_kernels(model)` (swaps every `nn.Linear` of a model for one, in place; the
`Runtime.prepare` of every inference command calls it on a CPU) and `swap_linears` (the swap itself, which
`quantize.py` shares). Does not own the numbers a layer computes (the same y = x W^T + b as `nn.Linear`), int8
weights (`quantize.py`), or anything on a GPU.

Why. Decoding one token at batch 1 is a matrix-vector product per layer, bound by how fast the weights stream
from memory; `nn.Linear`'s default kernels reach about a third of this machine's bandwidth there (GPT-2 124M's
matrices on a 2-core AVX-512 BF16 CPU: fp32 14 GB/s and bf16 17 GB/s of about 50 GB/s). Measured beside them
(`benchmarks/cpu_decode.py`, docs/benchmarks.md), PyTorch's own kernels that do better are:
- float32: oneDNN with the weight reordered once, at load, into its blocked layout (`torch.ops.mkldnn.
  _reorder_linear_weight` + `_linear_pointwise`, what torch.compile's CPU backend uses for frozen weights):
  25 GB/s at one row, 17 at eight (the default re-lays the weight out at every call: 14 and 9);
- bfloat16, one row: ATen's own vectorised matrix-vector product (oneDNN switched off for the call), 32 GB/s;
  several rows: oneDNN as `nn.Linear` calls it (its matrix-matrix kernels win there; ATen's is 5 GB/s at 8 rows).
A layer whose weights cannot be reordered here (a PyTorch built without oneDNN, another architecture) keeps
the default kernel. Results equal `nn.Linear`'s to float rounding: tests/test_cpu_linear.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# oneDNN's on/off switch is one setting for the whole process: a bf16 one-row product turns it off for its call
# and back, under this lock, so two threads never leave it off. A multi-row bf16 product that another thread
# runs during that call takes ATen's kernel too (the same numbers to rounding, slower); the server runs every
# decode step on one thread, so it never meets this.
_ONEDNN_SWITCH = threading.Lock()


def _can_reorder() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class CPULinear(nn.Module):
    """y = x W^T + b with the kernel chosen for the weight's dtype (module docstring). `packed` holds an fp32
    weight in oneDNN's layout (then `weight` is None, and the model cannot be moved or cast: load it again); a
    bf16 weight stays as it is. The kernel depends on the number of rows, so a row's numbers can differ by
    float rounding with the rows beside it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.weight: torch.Tensor | None = None
        self.packed: torch.Tensor | None = None
        if w.dtype == torch.float32 and _can_reorder():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)
            except RuntimeError:  # not supported here: the default kernel
                self.packed = None
        if self.packed is None:
            self.weight = nn.Parameter(w.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in)
        if self.packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        elif flat.size(0) == 1 and flat.dtype == torch.bfloat16:
            with _ONEDNN_SWITCH:  # (torch.backends.mkldnn.flags would also warn about TF32 at every call)
                was = torch._C._get_mkldnn_enabled()
                torch._C._set_mkldnn_enabled(False)  # ATen's matrix-vector product
                try:
                    y = F.linear(flat, self.weight, self.bias)
                finally:
                    torch._C._set_mkldnn_enabled(was)
        else:
            y = F.linear(flat, self.weight, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        if self.packed is not None:  # a reordered weight is this CPU's layout: it moves and casts nowhere
            raise ValueError("this model's weights were laid out for this CPU when it was loaded for inference; load "
                             "the run again with the device and dtype you want (scratchgpt.load(run, device=..., "
                             "dtype=...))")
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        kernel = "oneDNN reordered" if self.packed is not None else "ATen/oneDNN by rows"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kernel}"


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear of a CPU model for a `CPULinear`, in place (a head tied to the token embedding gets
    its own copy; the embedding table stays for lookups). Models on other devices are returned as they are."""
    if next(model.parameters()).device.type != "cpu":
        return model
    return swap_linears(model, CPULinear, exact=True)


def swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module], exact: bool) -> nn.Module:
    """Replace every nn.Linear child of every module of `model` with `make(child)`, in place. `exact`: only
    modules whose type is nn.Linear itself (subclasses stay); else every instance of nn.Linear."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Linear) if exact else isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
    return model


__all__ = ["CPULinear", "swap_linears", "use_cpu_kernels"]

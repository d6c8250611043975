"""The runtime: where and how tensors compute, set up once by every entry point.

Owns device choice (`resolve_device`: auto picks CUDA, then MPS, then the CPU), the compute dtype
(`resolve_dtype`: bf16 by default on CUDA and on CPUs that compute bf16 natively, `cpu_has_native_bf16`;
fp32 elsewhere unless asked), autocast, TF32 matmuls
on CUDA, the CPU thread count, seeding and `torch.compile`. `setup` does all of it and returns a `Runtime`
that train, bench, sample, eval, serve, the lecture and the Python API use alike. Does not own models,
data, files or the process group (`distributed.py` joins that; `setup` only pins a rank's GPU).
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; asking for one that is absent is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # sample/serve take --device as free text
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or mps") from None
    # the messages name no flag: train (train.device), sample and serve (--device) all come here
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but no CUDA GPU is available; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' was asked for but MPS is not available; use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or mps")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX-512 BF16 or AMX; Arm: the BF16 extension), where
    bf16 halves the bytes each matmul reads at no cost in speed. Elsewhere bf16 is emulated and fp32 is faster."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags = set(re.findall(r"\b(avx512_bf16|amx_bf16|bf16)\b", text))
    if flags:
        return True
    if sys.platform == "darwin":  # Apple silicon from M2 on
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype matmuls run in: auto is bf16 on CUDA and on CPUs that compute bf16 natively, fp32 elsewhere;
    float32 and bfloat16 as named."""
    if name not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "bfloat16" or (name == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))):
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class Runtime:
    """Where tensors live (`device`), the dtype matmuls run in (`dtype`) and whether to compile."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    compile: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for training and evaluation: fp32 weights, matmuls in `dtype` (nothing for fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def compiled(self, module: nn.Module) -> nn.Module:
        """`torch.compile(module)` when compiling is on, else the module itself."""
        return torch.compile(module) if self.compile else module

    def synchronize(self) -> None:
        """Wait for the device to finish what was queued (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def set_threads(threads: int) -> None:
    """CPU threads for torch's intra-op pool; 0 keeps torch's default."""
    if threads < 0:
        raise UserError(f"the thread count must be 0 (torch's default) or positive, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def setup(device: str = "auto", dtype: str = "auto", *, threads: int = 0, seed: int | None = None,
          compile: bool = False, local_rank: int | None = None) -> Runtime:
    """Resolve the device and dtype, set threads and TF32, seed torch, and return the `Runtime`.

    `local_rank` (under torchrun) pins this process to its own GPU, cuda:local_rank.
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and local_rank is not None:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    set_threads(threads)
    if dev.type == "cuda":  # TF32 for any fp32 matmul left (bf16 autocast covers most)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if seed is not None:
        torch.manual_seed(seed)
    return Runtime(dev, resolve_dtype(dtype, dev), compile)


__all__ = ["DEVICES", "DTYPES", "Runtime", "cpu_has_native_bf16", "resolve_device", "resolve_dtype", "set_threads",
           "setup"]

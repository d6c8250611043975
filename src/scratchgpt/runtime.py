"""The runtime: where and how tensors compute, set up once by every entry point.

Owns device choice (`resolve_device`: auto picks CUDA, then MPS, then the CPU), the precision policy
(`resolve_dtype`: what `dtype = "auto"` means for each use on each device class, `POLICY`; whether this CPU
computes bf16 natively, `cpu_has_native_bf16`, which the environment variable SCRATCHGPT_NATIVE_BF16=1 / 0
forces either way so every branch of the policy can run on any machine), autocast for training, casting a
model for inference (`Runtime.prepare`), TF32 matmuls on CUDA, the CPU thread count, seeding and
`torch.compile`. `setup` does all of it and returns a `Runtime` that train, bench, sample, eval, serve, chat,
the lecture and the Python API use alike. Does not own models, data, files or the process group
(`distributed.py` joins that; `setup` only pins a rank's GPU).

Uses. "train": fp32 master weights, matmuls under autocast in the policy's dtype. "infer" (sampling, the
API, the server, chat, eval and scoring alike): the weights themselves are cast to the policy's dtype, with
no autocast, so every command that reads a run computes the same numbers for the same flags.
"""

from __future__ import annotations

import contextlib
import functools
import os
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
USES = ("train", "infer")
NATIVE_BF16_ENV = "SCRATCHGPT_NATIVE_BF16"  # 1 / 0: answer cpu_has_native_bf16 so (tests run both policies)

# What dtype = "auto" means, per device class and use. Measured, not assumed: docs/precision.md has the table
# and the figures behind each entry (CPU classes: "cpu-bf16" computes bf16 natively, "cpu" emulates it).
POLICY: dict[tuple[str, str], torch.dtype] = {
    ("cuda", "train"): torch.bfloat16,
    ("cuda", "infer"): torch.bfloat16,
    ("cpu-bf16", "train"): torch.bfloat16,
    ("cpu-bf16", "infer"): torch.bfloat16,
    ("cpu", "train"): torch.float32,
    ("cpu", "infer"): torch.float32,
    ("mps", "train"): torch.float32,
    ("mps", "infer"): torch.float32,
}


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX-512 BF16 or AMX; Arm: the BF16 extension), where
    bf16 halves the bytes each matmul reads. Elsewhere bf16 is emulated. SCRATCHGPT_NATIVE_BF16=1 or 0 forces
    the answer (so the suite runs both branches of the policy on any machine)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced:
        raise UserError(f"{NATIVE_BF16_ENV} must be 1 or 0 (or unset to ask the CPU), got {forced!r}")
    return _cpu_reports_bf16()


@functools.cache
def _cpu_reports_bf16() -> bool:
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


def device_class(device: torch.device) -> str:
    """The row of the precision policy a device falls in: cuda, mps, cpu-bf16 (native bf16) or cpu."""
    if device.type == "cpu":
        return "cpu-bf16" if cpu_has_native_bf16() else "cpu"
    return device.type


def resolve_dtype(name: str, device: torch.device, use: str = "train") -> torch.dtype:
    """The dtype of a use ("train": autocast's; "infer": the weights') on a device: auto follows `POLICY`;
    float32 and bfloat16 as named."""
    if name not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}, got {use!r}")
    if name == "auto":
        return POLICY.get((device_class(device), use), torch.float32)
    return torch.bfloat16 if name == "bfloat16" else torch.float32


@dataclass(frozen=True)
class Runtime:
    """Where tensors live (`device`), the dtype of its use (`dtype`), the use and whether to compile."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    compile: bool = False
    use: str = "train"
    quantize: str = "none"  # inference only: none | int8 (weight-only, `quantize.py`)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for training and its evaluation: fp32 weights, matmuls in `dtype` (nothing for fp32,
        nor for inference, whose weights are already in `dtype`: see `prepare`)."""
        if self.dtype == torch.float32 or self.use != "train":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """A model ready for inference: on the device, its weights in `dtype` (the matrices in int8 when
        `quantize` says so, else on a CPU computed by the kernels `cpu_linear.py` chose), in eval mode."""
        from .cpu_linear import use_cpu_kernels
        from .quantize import quantize

        model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.quantize != "none":
            return quantize(model, self.quantize)
        if self.compile:  # torch.compile picks (and prepacks) its own kernels
            return model
        return use_cpu_kernels(model)  # on a CPU: the matrix kernels that measured fastest (cpu_linear.py)

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
          compile: bool = False, local_rank: int | None = None, use: str = "train",
          quantize: str = "none") -> Runtime:
    """Resolve the device and the dtype of `use` ("train" or "infer"), set threads and TF32, seed torch, and
    return the `Runtime`. `quantize` (none | int8) is for inference: `Runtime.prepare` applies it.

    `local_rank` (under torchrun) pins this process to its own GPU, cuda:local_rank.
    """
    from .quantize import QUANTIZE

    if quantize not in QUANTIZE:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize != "none" and use != "infer":
        raise UserError("quantized weights are for inference (sample, serve, chat, eval); training needs full ones")
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
    return Runtime(dev, resolve_dtype(dtype, dev, use), compile, use, quantize)


__all__ = ["DEVICES", "DTYPES", "NATIVE_BF16_ENV", "POLICY", "Runtime", "USES", "cpu_has_native_bf16", "device_class",
           "resolve_device", "resolve_dtype", "set_threads", "setup"]

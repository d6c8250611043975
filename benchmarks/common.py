"""What the benchmark scripts share: running as another CPU class, the corpus, timing, and the table each prints last.

`as_cpu_class("avx2")` re-runs the calling script with ATen's kernels capped at AVX2 (ATEN_CPU_CAPABILITY=avx2),
oneDNN's at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) and the precision policy's native-bf16 answer forced to no
(SCRATCHGPT_NATIVE_BF16=0): the code paths an AVX2-only CPU takes, on this machine's memory. It is an emulation
of the class, not such a CPU; say so wherever its figures go. The variables must be set before torch loads,
hence the re-run. `corpus_path` finds tiny Shakespeare (a path given, else $SCRATCHGPT_TINYSHAKESPEARE, else
../shared/data/tinyshakespeare/input.txt); `best_of` times a call. `print_table` writes rows under a header,
columns padded, a rule under the header.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchgpt.errors import UserError

REPO = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "SCRATCHGPT_NATIVE_BF16": "0"}


def cpu_class_env(cpu_class: str) -> dict[str, str]:
    """The environment of a child process that runs as `cpu_class` (native: this CPU as it is)."""
    return {**os.environ, **(AVX2_ENV if cpu_class == "avx2" else {})}


def as_cpu_class(cpu_class: str) -> None:
    """Re-run this script as `cpu_class` unless it already runs so (returns only then)."""
    if cpu_class == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], cpu_class_env(cpu_class))


def corpus_path(arg: str | None = None, flag: str | None = "--input") -> Path:
    """The corpus: `arg`, else $SCRATCHGPT_TINYSHAKESPEARE, else the shared copy; a UserError naming the
    script's own flag for it (`flag`, None where it has none) when that is not a file."""
    path = Path(arg or os.environ.get("SCRATCHGPT_TINYSHAKESPEARE") or REPO.parent / "shared/data/tinyshakespeare/input.txt")
    if not path.is_file():
        hint = f"pass {flag} or " if flag else ""
        raise UserError(f"corpus '{path}' not found; {hint}set SCRATCHGPT_TINYSHAKESPEARE")
    return path


def best_of(fn: Callable[[], Any], repeats: int, warmup: bool = False) -> tuple[float, float, Any]:
    """(best wall seconds, best CPU seconds, last result) over repeats calls, after one untimed call if warmup."""
    if warmup:
        fn()
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return min(walls), min(cpus), out


def print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [head, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for j, r in enumerate(table):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("-+-".join("-" * w for w in widths))

"""The KV cache's dtype on a CPU: decode speed with the cache in float32 (the default there, where the decode
step then attends in float32) against a cache in the weights' own dtype, in one process, alternating.

    python benchmarks/kv_cache.py                                   # native class: auto (bf16 here) and int8
    python benchmarks/kv_cache.py --cpu-class avx2 --weights bfloat16:none float32:int8

Both variants run the same model (the random GPT-2 124M-shaped run `cpu_decode.py` builds, loaded through
`scratchgpt.load`, so with the inference kernels the commands use) through the same `DecodeCore`, greedy, and
differ only in `DecodeCore(cache_dtype=...)`. Each case prefills `--prompt-len` tokens per row (untimed), then
times `--new-tokens` decode steps; the two variants alternate `--reps` times and the best of each is kept, so a
drift in the machine's speed hits both. Prints a table last. `--cpu-class avx2` runs as an AVX2-only CPU would
(see common.py): an emulation of the class.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import as_cpu_class, print_table
from cpu_decode import make_models

import scratchgpt
from scratchgpt.generate import DecodeCore, Request
from scratchgpt.sampling import SamplingSettings


def decode_rate(model, prompts: list[list[int]], new: int, cache: torch.dtype) -> float:
    """Tokens per second over `new` greedy decode steps of every row, after an untimed prefill."""
    core = DecodeCore(model, lanes=len(prompts), cache_dtype=cache)
    with torch.no_grad():
        core.add([Request(prompts, 1, SamplingSettings(max_new_tokens=new + 1, temperature=0))])
        t0 = time.perf_counter()
        for _ in range(new):
            core.advance(core.sample())
        dt = time.perf_counter() - t0
    return len(prompts) * new / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["auto:none", "auto:int8"],
                    help="inference weights, DTYPE:QUANTIZE (dtype auto|float32|bfloat16, quantize none|int8)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--cpu-class", choices=["native", "avx2"], default="native")
    args = ap.parse_args()
    as_cpu_class(args.cpu_class)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, run = make_models(Path(tmp), 0)
        g = torch.Generator().manual_seed(0)
        for spec in args.weights:
            dtype, quant = spec.split(":")
            model = scratchgpt.load(run, device="cpu", dtype=dtype, quantize=quant).model
            own = next(model.parameters()).dtype  # the embedding's: the activations' dtype
            for batch in args.batch:
                for plen in args.prompt_len:
                    prompts = torch.randint(50257, (batch, plen), generator=g).tolist()
                    best = {torch.float32: 0.0, own: 0.0}
                    decode_rate(model, prompts, 4, torch.float32)  # warm-up
                    for _ in range(args.reps):
                        for cache in best:
                            best[cache] = max(best[cache], decode_rate(model, prompts, args.new_tokens, cache))
                    weights = f"{dtype} -> {str(own).removeprefix('torch.')}" + (" + int8" if quant == "int8" else "")
                    ratio = f"{best[torch.float32] / best[own]:.2f}x" if own != torch.float32 else "-"
                    rows.append((weights, str(batch), str(plen), f"{best[torch.float32]:.1f}",
                                 f"{best[own]:.1f}" if own != torch.float32 else "(same)", ratio))
                    print(" | ".join(rows[-1]), flush=True)
    print(f"\nGPT-2 124M shape, random weights, {args.new_tokens} greedy decode steps after the prompt, best of "
          f"{args.reps}, {torch.get_num_threads()} threads, torch {torch.__version__}; CPU class: {args.cpu_class} "
          f"(ATen {torch.backends.cpu.get_cpu_capability()})")
    print_table(("weights", "batch", "prompt", "tok/s, float32 cache", "tok/s, weights' dtype cache",
                 "float32 / weights'"), rows)


if __name__ == "__main__":
    main()

"""Training speed: tokens/s, ms per step, MFU and peak memory of recipes on random tokens (one process).

    python benchmarks/train_speed.py configs/gpt2_124m.toml --peak-flops 989e12
    python benchmarks/train_speed.py configs/shakespeare_char_cpu.toml --steps 10 --device cpu

Same as `scratchgpt bench`, for several recipes at once; `--section.key=value` overrides apply to all.
Prints one table last. Figures go to docs/benchmarks.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import sys

from scratchgpt.bench import bench_train, format_table, with_overrides
from scratchgpt.config import load_recipe
from scratchgpt.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="recipes (TOML)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--peak-flops", type=float, default=None, help="the device's peak FLOP/s for MFU (else train.peak_flops)")
    args, overrides = p.parse_known_args(argv)
    try:
        results = []
        for path in args.configs:
            cfg = with_overrides(load_recipe(path, overrides), args.batch_size, args.device)
            peak = args.peak_flops if args.peak_flops is not None else cfg.train.peak_flops
            results.append(bench_train(cfg, args.steps, args.warmup, peak))
            print(f"{path}: done", file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time a training recipe from launch: wall seconds, best val loss, and when it was reached.

Runs `scratchgpt train RECIPE` as a fresh process (start-up included) --runs times, each into a new
temporary run directory, and reads metrics.jsonl. The recipe's evaluation decides the val figure (the
CPU recipes evaluate val on the full split). Prepares data/shakespeare_char first if it is missing
($SCRATCHGPT_TINYSHAKESPEARE or the download).

    python benchmarks/cpu_recipe.py configs/shakespeare_char_cpu.toml --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(recipe: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "train", recipe, "--quiet", "--out", tmp, *overrides],
                              capture_output=True, text=True)
        wall = time.time() - start
        if proc.returncode:
            sys.exit(f"training failed:\n{proc.stderr[-2000:]}")
        rows = [json.loads(line) for line in Path(tmp, "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    steps = max(r["step"] for r in rows)
    return {"wall": wall, "best_val": best["val_loss"], "best_at": best["elapsed"], "best_step": best["step"],
            "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="--section.key=value overrides passed to train")
    args, extra = ap.parse_known_args()
    overrides = args.overrides + extra
    if not Path("data/shakespeare_char/meta.json").is_file():
        cmd = [sys.executable, "-m", "scratchgpt.cli", "prepare", "shakespeare_char"]
        if os.environ.get("SCRATCHGPT_TINYSHAKESPEARE"):
            cmd += ["--input", os.environ["SCRATCHGPT_TINYSHAKESPEARE"]]
        subprocess.run(cmd, check=True)
    results = []
    for i in range(args.runs):
        r = one_run(args.recipe, overrides)
        results.append(r)
        print(f"run {i + 1}: {r}", flush=True)
    print(f"\nrecipe {args.recipe} {' '.join(overrides)}")
    print(f"{'run':>4}{'wall s':>9}{'steps':>7}{'best val':>10}{'at step':>9}{'at s':>8}")
    for i, r in enumerate(results, 1):
        print(f"{i:>4}{r['wall']:>9.1f}{r['steps']:>7}{r['best_val']:>10.4f}{r['best_step']:>9}{r['best_at']:>8.1f}")


if __name__ == "__main__":
    main()

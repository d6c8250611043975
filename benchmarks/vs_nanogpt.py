"""Training side by side with nanoGPT on this machine: its CPU recipe, then ours in a third of its time.

    python benchmarks/vs_nanogpt.py --nanogpt ~/src/nanoGPT                 # a nanoGPT checkout you provide
    python benchmarks/vs_nanogpt.py --nanogpt DIR --fraction 0.2 --runs 2    # the moonshot: a fifth
    python benchmarks/vs_nanogpt.py --nanogpt DIR --cpu-class avx2           # as an AVX2-only CPU computes

1. nanoGPT's CPU recipe, the "cheap computer" line of its README (4 layers, 4 heads, 128 wide, block 64, batch
   12, 2000 iterations, no compile, dropout 0), run as a fresh process in a COPY of the checkout (the checkout
   itself is never written to) with tiny Shakespeare from $SCRATCHGPT_TINYSHAKESPEARE put where its prepare.py
   looks, so nothing is downloaded. Its wall time T runs from launching train.py to its exit.
2. Ours: `scratchgpt train RECIPE --train.time_limit=T * fraction` (default: the CPU speedrun recipe, a third of
   T) as a fresh process; its wall time is printed too (the recipe's last full evaluation and save come after
   its deadline).
3. Both models are scored by the same code on the same tokens: nanoGPT's best checkpoint (its ckpt.pt, loaded
   with torch.load(weights_only=True) into our GPT class: the same architecture, names and GELU) and our run's
   best weights, each over every non-overlapping 64-token window of the full val split (the windows of our
   `full_val` and `scratchgpt eval`), in float32.
Quiet machine only: nothing else may run meanwhile. Prints a table last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, corpus_path, cpu_class_env, print_table

from scratchgpt.errors import UserError

NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
               "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def run_nanogpt(checkout: Path, work: Path, env: dict, corpus: Path, extra: list[str]) -> tuple[float, Path]:
    """nanoGPT's CPU recipe in a copy of the checkout; (wall seconds, its ckpt.pt)."""
    copy = work / "nanogpt"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl"))
    data = copy / "data" / "shakespeare_char"
    shutil.copy(corpus, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, env=env, capture_output=True)
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", *NANOGPT_CPU, *extra], cwd=copy, env=env, capture_output=True,
                          text=True)
    wall = time.time() - start
    if proc.returncode:
        sys.exit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    return wall, copy / "out-shakespeare-char" / "ckpt.pt"


def run_ours(recipe: str, deadline: float, work: Path, env: dict, data_dir: Path,
             extra: list[str]) -> tuple[float, Path]:
    run = work / "ours"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "train", recipe, "--quiet", "--out", str(run),
                           f"--train.time_limit={deadline:.3f}", f"--data.dir={data_dir}", *extra], env=env,
                          capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode:
        sys.exit(f"scratchgpt failed:\n{proc.stderr[-2000:]}")
    return wall, run


def val_ids(data_dir: Path) -> np.ndarray:
    return np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64)


def full_val_loss(model: torch.nn.Module, ids: np.ndarray, block: int) -> float:
    """Mean loss over every non-overlapping window of the val split (the trainer's full_val windows)."""
    from scratchgpt.evaluate import score_tokens

    n = (len(ids) - 1) // block * block  # whole windows only, as the trainer's full_val
    with torch.no_grad():
        lp = score_tokens(model.float().eval(), ids[: n + 1], block, block, batch_size=128)
    return float(-lp.astype(np.float64).mean())


def nanogpt_model(ckpt_path: Path):
    """nanoGPT's checkpoint in our GPT class (same architecture: pre-LayerNorm, exact GELU, tied head, no bias)."""
    from scratchgpt.models import ModelConfig, build_model

    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    a = ck["model_args"]
    cfg = ModelConfig(n_layer=a["n_layer"], n_head=a["n_head"], n_embd=a["n_embd"], block_size=a["block_size"],
                      vocab_size=a["vocab_size"], bias="gpt2" if a["bias"] else "none", mlp="gelu")
    model = build_model(cfg)
    state = {k.removeprefix("_orig_mod.").removeprefix("transformer."): v for k, v in ck["model"].items()
             if not k.endswith(".attn.bias")}  # nanoGPT's causal-mask buffer (absent where it uses flash)
    model.load_state_dict(state, strict=True)
    return model, a["block_size"], int(ck["iter_num"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (only read; it runs in a copy)")
    ap.add_argument("--recipe", default=str(REPO / "configs/shakespeare_char_cpu_speedrun.toml"))
    ap.add_argument("--fraction", type=float, default=1 / 3, help="our deadline as a share of nanoGPT's wall time")
    ap.add_argument("--runs", type=int, default=1, help="pairs of runs, each nanoGPT then ours")
    ap.add_argument("--cpu-class", choices=["native", "avx2"], default="native",
                    help="avx2: both run as on an AVX2-only CPU (ATen and oneDNN capped at AVX2, no native bf16)")
    ap.add_argument("--nanogpt-arg", action="append", default=[], dest="nanogpt_args",
                    help="one more nanoGPT flag, repeatable (a smoke test: --nanogpt-arg=--max_iters=20)")
    ap.add_argument("--ours-arg", action="append", default=[], dest="ours_args",
                    help="one more override for our run, repeatable")
    args = ap.parse_args()
    checkout = Path(args.nanogpt).expanduser()
    if not (checkout / "train.py").is_file() or not (checkout / "config/train_shakespeare_char.py").is_file():
        sys.exit(f"'{checkout}' is not a nanoGPT checkout (no train.py / config/train_shakespeare_char.py)")
    try:
        corpus = corpus_path(None, flag=None)
    except UserError as e:
        sys.exit(str(e))
    env = cpu_class_env(args.cpu_class)
    from scratchgpt.checkpoint import load_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        subprocess.run([sys.executable, "-m", "scratchgpt.cli", "prepare", "shakespeare_char", "--input", str(corpus),
                        "--out", str(data_dir)], check=True, env=env, capture_output=True)
        ids = val_ids(data_dir)
        for i in range(args.runs):
            pair = work / f"pair{i}"
            pair.mkdir()
            t_nano, ck = run_nanogpt(checkout, pair, env, corpus, args.nanogpt_args)
            model, block, at = nanogpt_model(ck)
            loss_nano = full_val_loss(model, ids, block)
            deadline = t_nano * args.fraction
            t_ours, run = run_ours(args.recipe, deadline, pair, env, data_dir, args.ours_args)
            ours, _, cfg = load_model(run, which="best")
            loss_ours = full_val_loss(ours, ids, cfg.model.block_size)
            rows.append((i + 1, t_nano, at, loss_nano, deadline, t_ours, loss_ours))
            print(f"pair {i + 1}: nanoGPT {t_nano:.1f} s -> {loss_nano:.4f}; ours {deadline:.1f} s deadline "
                  f"({t_ours:.1f} s wall) -> {loss_ours:.4f}", flush=True)
    print(f"\nnanoGPT's CPU recipe vs scratchgpt {Path(args.recipe).name} at {args.fraction:.3g} of nanoGPT's wall "
          f"time; CPU class {args.cpu_class} (ATen {torch.backends.cpu.get_cpu_capability() if args.cpu_class == 'native' else 'AVX2'}), "
          f"torch {torch.__version__}, {os.cpu_count()} cores; full-val loss by the same scorer, float32")
    head = ("pair", "nanoGPT wall s", "its best ckpt at iter", "nanoGPT full val", "our deadline s", "our wall s",
            "our full val", "ours - nanoGPT")
    print_table(head, [(str(r[0]), f"{r[1]:.1f}", str(r[2]), f"{r[3]:.4f}", f"{r[4]:.1f}", f"{r[5]:.1f}", f"{r[6]:.4f}",
                        f"{r[6] - r[3]:+.4f}") for r in rows])


if __name__ == "__main__":
    main()

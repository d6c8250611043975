"""The measurements behind the precision policy (runtime.POLICY, docs/precision.md): each use in each dtype.

    python benchmarks/precision.py                      # this CPU as it is
    python benchmarks/precision.py --cpu-class avx2     # the code paths of an AVX2-only CPU (an emulation)
    python benchmarks/precision.py --run runs/shakespeare_char_cpu   # accuracy on a trained model too

For two model shapes (the CPU recipe's char model: 4 layers, 128 wide, block 64; GPT-2 124M: 12 layers, 768
wide, block 1024 here cut to 256 for training), and each dtype (float32; bfloat16: autocast for training,
bf16 weights for inference), it times every use the policy decides:
- train: one optimizer step of `train_step` (the function training runs), tokens/s;
- decode b1 / b8: `load().generate`-style greedy decoding through the engine at batch 1 and 8, tokens/s;
- score: `score_tokens` (what `eval` and `LoadedModel.score` run) over 64 windows, tokens/s.
Accuracy, on the random-weight shapes: the largest |log-probability| difference from float32 when scoring, and
the share of greedy tokens equal to float32's; with --run also on that trained model (its mean scored loss
against float32's over 20,000 val characters). Quiet machine only. Prints a table last.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import as_cpu_class, best_of, corpus_path, print_table

DTYPES = (torch.float32, torch.bfloat16)


def shapes():
    from scratchgpt.models import ModelConfig

    return {
        "char 4x128": (ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 32, 64),
        "GPT-2 124M": (ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257,
                                   bias="gpt2", mlp="gelu_tanh"), 2, 256),
    }


def train_speed(cfg, batch: int, block: int, dtype: torch.dtype, reps: int) -> float:
    from scratchgpt.bench import RandomTokens
    from scratchgpt.config import TrainConfig
    from scratchgpt.models import build_model
    from scratchgpt.optim import configure_optimizer
    from scratchgpt.runtime import Runtime
    from scratchgpt.train.step import Batches, train_step

    torch.manual_seed(0)
    model = build_model(replace(cfg, block_size=block))
    t = TrainConfig(batch_size=batch, device="cpu")
    opt = configure_optimizer(model, t, torch.device("cpu"))
    rt = Runtime(torch.device("cpu"), dtype, use="train")
    batches = Batches(RandomTokens(cfg.vocab_size, batch, block, rt.device, 0))
    return batch * block / best_of(lambda: train_step(model, model, opt, batches, t, rt), reps, warmup=True)[0]


def infer_model(cfg, dtype: torch.dtype):
    from scratchgpt.models import build_model
    from scratchgpt.runtime import Runtime

    torch.manual_seed(0)
    return Runtime(torch.device("cpu"), dtype, use="infer").prepare(build_model(cfg))


def decode(model, batch: int, new: int) -> tuple[float, list[list[int]]]:
    from scratchgpt.generate import Engine

    engine = Engine(model)
    prompts = [[(7 * r + 3 * i) % model.vocab_size for i in range(16)] for r in range(batch)]
    engine.generate_ids(prompts, max_new_tokens=4, temperature=0)
    t0 = time.perf_counter()
    ids = engine.generate_ids(prompts, max_new_tokens=new, temperature=0)
    return batch * new / (time.perf_counter() - t0), ids


def score(model, block: int, reps: int) -> tuple[float, torch.Tensor]:
    from scratchgpt.evaluate import score_tokens

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(model.vocab_size, (64 * block + 1,), generator=g).numpy()
    lp = score_tokens(model, ids, block, block, batch_size=16)
    secs = best_of(lambda: score_tokens(model, ids, block, block, batch_size=16), reps, warmup=True)[0]
    return (len(ids) - 1) / secs, torch.from_numpy(lp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-class", choices=["native", "avx2"], default="native")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--run", help="a trained run directory: also its scored loss per dtype")
    ap.add_argument("--text", help="the text --run is scored on (default: the last 20,000 characters of "
                                   "$SCRATCHGPT_TINYSHAKESPEARE)")
    args = ap.parse_args()
    as_cpu_class(args.cpu_class)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, (cfg, batch, block) in shapes().items():
        tr = {d: train_speed(cfg, batch, block, d, args.reps) for d in DTYPES}
        rows.append((name, "train (autocast)", f"batch {batch} x {block}", tr[DTYPES[0]], tr[DTYPES[1]], "-"))
        models = {d: infer_model(cfg, d) for d in DTYPES}
        for b in (1, 8):
            got = {d: decode(models[d], b, args.new_tokens) for d in DTYPES}
            same = sum(x == y for r32, r16 in zip(got[DTYPES[0]][1], got[DTYPES[1]][1], strict=True)
                       for x, y in zip(r32, r16, strict=False)) / (b * args.new_tokens)
            rows.append((name, f"decode batch {b}", f"{args.new_tokens} greedy tokens", got[DTYPES[0]][0],
                         got[DTYPES[1]][0], f"{same:.0%} of greedy tokens as fp32"))
        sc = {d: score(models[d], min(block, cfg.block_size), args.reps) for d in DTYPES}
        diff = float((sc[DTYPES[0]][1] - sc[DTYPES[1]][1]).abs().max())
        rows.append((name, "score", f"64 windows of {min(block, cfg.block_size)}", sc[DTYPES[0]][0], sc[DTYPES[1]][0],
                     f"max |logprob - fp32's| {diff:.2e}"))
    if args.run:
        import scratchgpt

        text = corpus_path(args.text, "--text").read_text(encoding="utf-8")[-20_000:]
        losses = {d: scratchgpt.load(args.run, dtype=str(d).removeprefix("torch.")).score(text).loss for d in DTYPES}
        rows.append((Path(args.run).name, "score (trained)", "20,000 val chars", float("nan"), float("nan"),
                     f"loss fp32 {losses[DTYPES[0]]:.5f}, bf16 {losses[DTYPES[1]]:.5f} "
                     f"({losses[DTYPES[1]] - losses[DTYPES[0]]:+.5f})"))
    from scratchgpt.runtime import cpu_has_native_bf16

    print(f"\nprecision per use; CPU class {args.cpu_class} (ATen {torch.backends.cpu.get_cpu_capability()}, native "
          f"bf16: {cpu_has_native_bf16()}), {torch.get_num_threads()} threads, torch {torch.__version__}; tokens/s, "
          "best of the repeats")
    head = ("model", "use", "work", "fp32 tok/s", "bf16 tok/s", "bf16 / fp32", "accuracy")
    print_table(head, [(r[0], r[1], r[2], f"{r[3]:,.0f}", f"{r[4]:,.0f}", f"{r[4] / r[3]:.2f}x" if r[3] == r[3] else "-",
                        r[5]) for r in rows])


if __name__ == "__main__":
    main()

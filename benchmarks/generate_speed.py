"""Generation speed: the KV-cache engine against the uncached path, tokens per second.

    python benchmarks/generate_speed.py                                  # CPU, 10.65M char model, batch 1
    python benchmarks/generate_speed.py --device cuda --model gpt2 --batch 1 64 --no-uncached

Models have random weights (speed does not depend on them): `char` is the lecture's final model (6 layers /
6 heads / 384, block 256, vocab 65, 10.65M parameters), `gpt2` the GPT-2 124M shape (12/12/768, block
1024, vocab 50257, biases). Each run samples `--new-tokens` tokens (temperature 1, top-k 200, fixed seed)
after a `--prompt-len`-token prompt; the uncached path uses the same sliding window policy, so past the
block both do the same work per token except for the cache. On CUDA the model runs in bf16 and the decode
step is a CUDA graph (captured in a warm-up call that is not timed). Prints a table last.
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchgpt.generate import Engine
from scratchgpt.models.gpt import GPT, GPTConfig
from scratchgpt.sampling import SamplingSettings

SHAPES = {
    "char": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True),
}


def timed(engine: Engine, prompts: list[list[int]], s: SamplingSettings, use_cache: bool, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = engine.generate_ids(prompts, s, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert all(len(row) == s.max_new_tokens for row in out)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--model", choices=sorted(SHAPES), default="char")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--new-tokens", type=int, default=1000)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--no-uncached", action="store_true", help="skip the uncached path (slow on big models)")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--window", choices=["full", "half"], default="half",
                    help="sliding policy past the block (both paths use it); full recomputes the block every token")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(SHAPES[args.model]).to(device).eval()
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
        torch.backends.cuda.matmul.allow_tf32 = True
    n_params = model.num_params() / 1e6
    engine = Engine(model, cuda_graphs=not args.no_cuda_graphs)
    s = SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0, top_k=200, seed=1337, window=args.window)
    rows = []
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len), generator=g).tolist()
        engine.generate_ids(prompts, s.replace(max_new_tokens=8))  # warm-up: allocate the cache, capture the graph
        dt = timed(engine, prompts, s, True, device)
        cached_tps = batch * args.new_tokens / dt
        rows.append(("cached", batch, cached_tps, dt))
        if not args.no_uncached:
            dt_u = timed(engine, prompts, s, False, device)
            rows.append(("uncached", batch, batch * args.new_tokens / dt_u, dt_u))
    print(f"model {args.model}: {n_params:.2f}M parameters, block {model.config.block_size}, "
          f"prompt {args.prompt_len} tokens, window {args.window}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'path':<10}{'device':<8}{'batch':>6}{'new tokens':>12}{'seconds':>10}{'tokens/s':>12}{'speedup':>9}")
    for path, batch, tps, dt in rows:
        base = next((r[2] for r in rows if r[0] == "uncached" and r[1] == batch), None)
        speedup = f"{tps / base:.1f}x" if base else "-"
        print(f"{path:<10}{device.type:<8}{batch:>6}{args.new_tokens:>12}{dt:>10.2f}{tps:>12,.0f}{speedup:>9}")


if __name__ == "__main__":
    main()

"""CPU decode speed against Hugging Face transformers, side by side in one run, through the public API.

    python benchmarks/cpu_decode.py                       # GPT-2 124M shape, batch 1 and 8, 200 new tokens
    python benchmarks/cpu_decode.py --threads 2 --new-tokens 200 --batch 1 8

Both engines run the same random GPT-2 124M-shaped weights (12 layers / 12 heads / 768 wide, block 1024,
vocab 50257, biases): transformers' `GPT2LMHeadModel.generate` (greedy, KV cache) on the Hugging Face
directory, and `scratchgpt.load(run, device="cpu", dtype=...).generate(...)` on a run directory imported from
it (`scratchgpt import-hf`), with a 50,257-character tokenizer so that every id is one character and text
maps to ids exactly. Each engine first generates once untimed (warm-up: allocation, compilation), then is
timed generating `--new-tokens` tokens greedily after a `--prompt-len`-token prompt. In float32 our tokens
must equal transformers' (the script stops otherwise); other dtypes are ours only. Prints a table last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import scratchgpt
from scratchgpt.interop.hf import import_hf
from scratchgpt.runtime import cpu_has_native_bf16
from scratchgpt.tokenizers import CharTokenizer

# one code point per id, from U+4E00 on, skipping the surrogates (JSON would pair them into other characters)
ALPHABET = [chr(c) for c in range(0x4E00, 0x4E00 + 52000) if not 0xD800 <= c <= 0xDFFF][:50257]


def make_models(root: Path, seed: int) -> tuple[object, Path]:
    """A random GPT-2 124M in transformers, saved; and a scratchgpt run directory imported from it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both engines generate every token
    hf.generation_config.pad_token_id = 0
    hf.save_pretrained(root / "hf", safe_serialization=True)
    run, _ = import_hf(str(root / "hf"), root / "run")
    (run / "tokenizer.json").write_text(json.dumps(CharTokenizer(ALPHABET).to_json()), encoding="utf-8")
    return hf, run


def time_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    with torch.no_grad():
        hf.generate(prompts, max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        dt = time.perf_counter() - t0
    return dt, out[:, prompts.size(1):].tolist()


def time_ours(run: Path, prompts: list[str], new: int, dtype: str, compile: str) -> tuple[float, list[list[int]]]:
    lm = scratchgpt.load(run, device="cpu", dtype=dtype, compile=compile)
    lm.generate(prompts, max_new_tokens=4, temperature=0)  # warm-up (compiles when asked)
    t0 = time.perf_counter()
    texts = lm.generate(prompts, max_new_tokens=new, temperature=0)
    dt = time.perf_counter() - t0
    return dt, [[ALPHABET.index(c) for c in t] for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--ours", nargs="+", default=["float32:off", "float32:on", "bfloat16:off", "bfloat16:on"],
                    help="our configurations, DTYPE:COMPILE (dtype auto|float32|bfloat16, compile on|off)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, run = make_models(Path(tmp), args.seed)
        g = torch.Generator().manual_seed(args.seed)
        for batch in args.batch:
            ids = torch.randint(50257, (batch, args.prompt_len), generator=g)
            texts = ["".join(ALPHABET[i] for i in row) for row in ids.tolist()]
            dt, want = time_hf(hf, ids, args.new_tokens)
            rows.append(("transformers generate", "float32", "-", batch, batch * args.new_tokens / dt, 1.0, "-"))
            base = rows[-1][4]
            for spec in args.ours:
                dtype, compile = spec.split(":")
                dt, got = time_ours(run, texts, args.new_tokens, dtype, compile)
                same = got == want
                if dtype == "float32" and not same:
                    raise SystemExit(f"float32 tokens differ from transformers' at batch {batch}")
                rows.append(("scratchgpt load().generate", dtype, compile, batch, batch * args.new_tokens / dt,
                             batch * args.new_tokens / dt / base, "yes" if same else "no"))
    print(f"\nGPT-2 124M shape, random weights, {args.prompt_len}-token prompts, {args.new_tokens} greedy tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, native bf16 on this CPU: "
          f"{cpu_has_native_bf16()}")
    head = ("engine", "dtype", "compile", "batch", "tokens/s", "vs transformers", "same tokens as transformers")
    table = [head] + [(r[0], r[1], r[2], str(r[3]), f"{r[4]:,.1f}", f"{r[5]:.2f}x", r[6]) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


if __name__ == "__main__":
    main()

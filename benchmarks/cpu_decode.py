"""CPU decode speed against Hugging Face transformers and against the machine's memory bandwidth, in one run.

    python benchmarks/cpu_decode.py                       # GPT-2 124M shape, batch 1 and 8, 200 new tokens
    python benchmarks/cpu_decode.py --threads 2 --new-tokens 200 --batch 1 8 --ours auto:off float32:off:int8
    python benchmarks/cpu_decode.py --cpu-class avx2      # as an AVX2-only CPU computes (see below)

Both engines run the same random GPT-2 124M-shaped weights (12 layers / 12 heads / 768 wide, block 1024,
vocab 50257, biases): transformers' `GPT2LMHeadModel.generate` (greedy, KV cache) on the Hugging Face
directory, and `scratchgpt.load(run, device="cpu", dtype=...).generate(...)` on a run directory imported from
it (`scratchgpt import-hf`), with a 50,257-character tokenizer so that every id is one character and text
maps to ids exactly. Each engine first generates once untimed (warm-up: allocation, compilation), then is
timed generating `--new-tokens` tokens greedily after a `--prompt-len`-token prompt. In float32 our tokens
must equal transformers' (the script stops otherwise); other dtypes are ours only. `auto:off` is what
`scratchgpt.load(run).generate` does with its default arguments on this machine.

The roofline. Decoding a token at batch B reads every weight matrix once per step (the KV cache and the
activations are small beside them at these lengths), so at most B x bandwidth / weight bytes tokens per second.
The script measures the machine's streaming bandwidth in the same run (`tensor.sum()` over 540 MB, best of 5,
at the same thread count) and prints each figure as a fraction of the roofline for its own weight bytes
(fp32: 4 bytes a weight, bf16: 2, int8: 1 plus a scale per row).

CPU classes. `--cpu-class avx2` re-runs the script with ATen's kernels capped at AVX2
(ATEN_CPU_CAPABILITY=avx2), oneDNN's at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) and the policy's native-bf16 answer
forced to no (SCRATCHGPT_NATIVE_BF16=0): the code paths an AVX2-only CPU takes, on this machine's memory. It is
an emulation of the class, not such a CPU: say so wherever its figures go. Prints a table last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import as_cpu_class, print_table

import scratchgpt
from scratchgpt.interop.hf import import_hf
from scratchgpt.quantize import weight_bytes
from scratchgpt.runtime import cpu_has_native_bf16, resolve_dtype
from scratchgpt.tokenizers import CharTokenizer

# one code point per id, from U+4E00 on, skipping the surrogates (JSON would pair them into other characters)
ALPHABET = [chr(c) for c in range(0x4E00, 0x4E00 + 56000) if not 0xD800 <= c <= 0xDFFF][:50257]
assert len(ALPHABET) == 50257  # every id of the vocabulary is a character


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


def time_ours(run: Path, prompts: list[str], new: int, dtype: str, compile: str,
              quantize: str) -> tuple[float, list[list[int]], int, str]:
    """Seconds, tokens, the weight bytes a step reads, and the dtype auto resolved to."""
    lm = scratchgpt.load(run, device="cpu", dtype=dtype, compile=compile, quantize=quantize)
    lm.generate(prompts, max_new_tokens=4, temperature=0)  # warm-up (compiles when asked)
    t0 = time.perf_counter()
    texts = lm.generate(prompts, max_new_tokens=new, temperature=0)
    dt = time.perf_counter() - t0
    resolved = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    return dt, [[ALPHABET.index(c) for c in t] for t in texts], weight_bytes(lm.model), resolved


def bandwidth(reps: int = 10) -> float:
    """Streaming read bandwidth in bytes/s: the best of `reps` sums over 540 MB of float32 (at the thread count
    set; a 2-core machine of this kind measured 35 to 50 GB/s from run to run)."""
    x = torch.ones(540_000_000 // 4)
    x.sum()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--ours", nargs="+", default=["auto:off", "float32:off", "bfloat16:off", "auto:off:int8"],
                    help="our configurations, DTYPE:COMPILE[:QUANTIZE] (dtype auto|float32|bfloat16, compile on|off, "
                         "quantize none|int8); auto:off is load(run).generate's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-class", choices=["native", "avx2"], default="native",
                    help="avx2: run as an AVX2-only CPU would (ATen and oneDNN capped at AVX2, no native bf16)")
    args = ap.parse_args()
    as_cpu_class(args.cpu_class)
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = bandwidth()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, run = make_models(Path(tmp), args.seed)
        g = torch.Generator().manual_seed(args.seed)
        for batch in args.batch:
            ids = torch.randint(50257, (batch, args.prompt_len), generator=g)
            texts = ["".join(ALPHABET[i] for i in row) for row in ids.tolist()]
            dt, want = time_hf(hf, ids, args.new_tokens)
            hf_bytes = sum(m.weight.numel() * 4 for m in hf.modules()  # every matrix multiplied, the head once
                           if getattr(m, "weight", None) is not None and m.weight.dim() == 2
                           and m is not hf.transformer.wte and m is not hf.transformer.wpe)
            rate = batch * args.new_tokens / dt
            rows.append(("transformers generate", "float32", "-", "-", batch, rate, 1.0, rate / (batch * bw / hf_bytes),
                         "-"))
            base = rate
            for spec in args.ours:
                dtype, compile, quant = (spec.split(":") + ["none"])[:3]
                dt, got, nbytes, resolved = time_ours(run, texts, args.new_tokens, dtype, compile, quant)
                same = got == want
                if resolved == "float32" and quant == "none" and not same:
                    raise SystemExit(f"float32 tokens differ from transformers' at batch {batch}")
                rate = batch * args.new_tokens / dt
                name = "scratchgpt load().generate" + (" (defaults)" if spec == "auto:off" else "")
                rows.append((name, f"{dtype} -> {resolved}" if dtype == "auto" else dtype, compile, quant, batch, rate,
                             rate / base, rate / (batch * bw / nbytes), "yes" if same else "no"))
    print(f"\nGPT-2 124M shape, random weights, {args.prompt_len}-token prompts, {args.new_tokens} greedy tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; CPU class: {args.cpu_class} (ATen "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}, dtype auto for inference: "
          f"{str(resolve_dtype('auto', torch.device('cpu'), 'infer')).removeprefix('torch.')}); streaming bandwidth "
          f"{bw / 1e9:.1f} GB/s")
    head = ("engine", "dtype", "compile", "quantize", "batch", "tokens/s", "vs transformers", "of roofline",
            "same tokens as transformers")
    print_table(head, [(r[0], r[1], r[2], r[3], str(r[4]), f"{r[5]:,.1f}", f"{r[6]:.2f}x", f"{r[7]:.0%}", r[8])
                       for r in rows])


if __name__ == "__main__":
    main()

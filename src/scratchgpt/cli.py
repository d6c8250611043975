"""The `scratchgpt` command: argparse subcommands that call library functions.

Owns argument parsing, turning `UserError` into one `error: ...` line and a non-zero exit, and writing
generated text to stdout. Contains no logic of its own beyond wiring.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .errors import UsageError, UserError
from .limits import INT64_MAX, MAX_BATCH, MAX_NEW_TOKENS_CAP, MAX_THREADS, Range, floats, ints

DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)
CORPUS_OPTIONS = ("text_field", "txt_docs", "shard_tokens", "workers", "hf_config", "hf_split")


def _cmd_prepare(args: argparse.Namespace) -> int:
    inputs = args.input or []
    if args.dataset == "chat":
        return _prepare_chat(args, inputs)
    if args.run is not None:
        raise UserError("--run is for `prepare chat` (the run whose tokenizer and context the conversations use)")
    if args.dataset == "shakespeare_char":
        from .data import prepare_shakespeare_char

        if len(inputs) > 1:
            raise UserError("`prepare shakespeare_char` takes one --input FILE")
        meta = prepare_shakespeare_char(inputs[0] if inputs else None, args.out or "data/shakespeare_char",
                                        force=args.force)
        out = args.out or "data/shakespeare_char"
    else:
        if not inputs:
            raise UserError("`prepare text` needs --input FILE, DIRECTORY or hf:DATASET")
        out = args.out or f"data/{Path(inputs[0].removeprefix('hf:')).stem}"
        options = {k: getattr(args, k) for k in CORPUS_OPTIONS if getattr(args, k) is not None}
        # corpus, not data: data imports torch, which would weigh on every forked tokenizer worker
        from .corpus import prepare_corpus, wants_corpus

        if wants_corpus(inputs, options):
            done = prepare_corpus(inputs, out, args.tokenizer, val_fraction=args.val_fraction,
                                  block_size=args.block_size, progress=True, force=args.force, **options)
            m = done.meta
            if done.skipped:
                print(f"{out} is already prepared from these inputs, tokenizer and options; nothing to do",
                      file=sys.stderr)
            else:
                n_shards = sum(len(v) for v in m["shards"].values())
                print(f"wrote {out}: vocab {m['vocab_size']}, {m['train_tokens']:,} train and {m['val_tokens']:,} "
                      f"val tokens ({m['dtype']}) from {m['train_documents'] + m['val_documents']:,} documents "
                      f"in {n_shards} shards", file=sys.stderr)
            return 0
        from .data import prepare_text

        meta = prepare_text(inputs[0], out, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                            block_size=args.block_size, vocab_size=args.vocab_size, force=args.force)
    print(f"wrote {out}: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train and "
          f"{meta['val_tokens']:,} val tokens ({meta['dtype']})", file=sys.stderr)
    return 0


def _prepare_chat(args: argparse.Namespace, inputs: list[str]) -> int:
    from .chat_data import prepare_chat
    from .checkpoint import read_config, read_tokenizer

    if not inputs or args.run is None:
        raise UserError("`prepare chat` needs --input FILE.jsonl and --run RUN_DIR (the run to fine-tune)")
    out = args.out or f"data/{Path(inputs[0]).stem}"
    block = read_config(args.run).model.block_size
    meta = prepare_chat(inputs, out, read_tokenizer(args.run), block, val_fraction=args.val_fraction,
                        source=str(Path(args.run).resolve()), force=args.force)
    print(f"wrote {out}: {meta['train_conversations']:,} train and {meta['val_conversations']:,} val conversations, "
          f"{meta['train_tokens']:,} + {meta['val_tokens']:,} tokens, vocab {meta['vocab_size']} with the chat "
          "template", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace, overrides: list[str], launch: float) -> int:
    from .checkpoint import read_config
    from .config import load_recipe
    from .train import train

    if args.config:
        cfg = load_recipe(args.config, overrides)
    elif args.resume:
        cfg = read_config(args.resume, overrides)
    else:
        raise UserError("`train` needs a recipe (a name such as shakespeare_char_cpu, see `scratchgpt recipes`, or "
                        "a TOML file) or --resume RUN_DIR")
    from .console import echo

    result = train(cfg, out_dir=args.out, resume=args.resume, launch_time=launch, progress=not args.quiet,
                   force=args.force)
    echo(f"done: step {result.step}, best val loss {result.best_val:.4f}, {result.elapsed:.1f} s; "
         f"run directory {result.run_dir}")  # rank 0 only under torchrun
    return 0


def _cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    from .bench import bench_train, format_table, with_overrides
    from .config import load_recipe

    cfg = with_overrides(load_recipe(args.config, overrides), args.batch_size, args.device)
    peak = args.peak_flops if args.peak_flops is not None else cfg.train.peak_flops
    print(format_table([bench_train(cfg, args.steps, args.warmup, peak)]))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .api import load
    from .sampling import SamplingSettings

    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("give --prompt or --prompt-file, not both")
    if args.interactive and (args.prompt is not None or args.prompt_file is not None or args.num_samples != 1):
        raise UserError("--interactive takes its text from what you type; drop --prompt, --prompt-file and --num-samples")
    prompt = args.prompt or ""
    if args.prompt_file:
        from .fileio import read_utf8

        prompt = read_utf8(args.prompt_file)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, stop=tuple(args.stop or ()), seed=args.seed,
                                window=args.window, ignore_eos=args.ignore_eos)
    lm = load(args.run_dir, which=args.which, device=args.device, dtype=args.dtype,
              cuda_graphs=not args.no_cuda_graphs, threads=args.threads, quantize=args.quantize)
    if args.interactive:
        from .repl import run_repl

        run_repl(lm.engine, settings)
        return 0
    # the engine checks the prompt (unknown characters) here, before anything is printed
    rows = lm.engine.stream_rows([prompt], settings, args.num_samples)
    out, rest = sys.stdout, [""] * args.num_samples
    out.write(prompt)
    for r, piece in rows:  # sample 0 streams; the others (same batch, same prefill) print when done
        if r == 0:
            out.write(piece)
            out.flush()
        else:
            rest[r] += piece
    for text in rest[1:]:
        out.write("\n---------------\n" + prompt + text)
    out.write("\n")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .api import load
    from .repl import run_chat
    from .sampling import SamplingSettings

    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
    lm = load(args.run_dir, which=args.which, device=args.device, dtype=args.dtype,
              cuda_graphs=not args.no_cuda_graphs, threads=args.threads, quantize=args.quantize)
    lm.tokenizer.require_chat_template()
    run_chat(lm.engine, settings, system=args.system)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate_run, format_report

    report = evaluate_run(args.run_dir, args.text or (), args.choices, which=args.which, device=args.device,
                          dtype=args.dtype, threads=args.threads, batch_size=args.batch_size, stride=args.stride,
                          progress=not args.quiet, quantize=args.quantize)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .interop.hf import export_hf

    out, note = export_hf(args.run_dir, args.out, which=args.which, force=args.force)
    print(f"wrote {out} (transformers.GPT2LMHeadModel.from_pretrained loads it); {note}", file=sys.stderr)
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from .interop.hf import import_hf

    out = args.out or f"runs/{Path(args.source).name}"
    out, tok = import_hf(args.source, out, force=args.force)
    if tok is not None:
        print(f"wrote run directory {out} with the {tok.kind} tokenizer; try `scratchgpt sample {out}`", file=sys.stderr)
    else:
        print(f"wrote run directory {out} without a tokenizer (the source has no GPT-2 vocab.json/merges.txt); "
              "add a tokenizer.json before sampling", file=sys.stderr)
    return 0


def _cmd_lecture(args: argparse.Namespace) -> int:
    from .lecture import run_lecture, write_notebook

    if args.notebook is not None:
        print(f"wrote {write_notebook(args.notebook)}: open it in Jupyter (it runs top to bottom on a CPU)",
              file=sys.stderr)
        return 0
    report = run_lecture(args.budget, args.device, data_dir=args.data, runs_dir=args.runs, docs_dir=args.docs,
                         progress=not args.quiet)
    print(f"done: trained {len(report.trained)} of {len(report.results)} steps in {report.seconds:.0f} s; "
          f"wrote {report.results_path} and {report.plot_path}", file=sys.stderr)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from . import recipes

    print(recipes.text(args.name) if args.action == "show" else recipes.listing(), end="" if args.action else "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .chat_demo import run_chat_demo

    print(run_chat_demo(args.corpus, data_dir=args.data, runs_dir=args.runs, budget=args.budget,
                        progress=not args.quiet))
    return 0


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    if args.action == "train":
        from .console import progress_bar
        from .tokenizers.bpe_train import TOKENIZER_FILE, train_bpe_files

        with progress_bar(desc="merging", unit="merge") as bar:
            tok = train_bpe_files(args.input, args.vocab_size, args.out, special_tokens=args.special or ["<|endoftext|>"],
                                  pattern=args.pattern, progress=_advance(bar))
        note = "" if tok.vocab_size == args.vocab_size else " (the text had no more pairs to merge)"
        print(f"wrote {Path(args.out) / TOKENIZER_FILE}: {tok.vocab_size:,} tokens, {len(tok.merges):,} merges{note}",
              file=sys.stderr)
        return 0
    from .fileio import read_utf8
    from .tokenizers.compare import compare_tokenizers, format_table

    text = read_utf8(args.input)
    print(format_table(compare_tokenizers(text, args.vocab_size), len(text)))
    return 0


def _advance(bar):  # a progress(done, total) callback that moves a progress_bar
    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return report


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.run_dir, host=args.host, port=args.port, which=args.which, device=args.device, dtype=args.dtype,
          threads=args.threads, cuda_graphs=not args.no_cuda_graphs, quantize=args.quantize,
          max_batch=args.max_batch, max_tokens=args.max_tokens_cap, max_n=args.max_n,
          max_prompt_tokens=args.max_prompt_tokens, max_waiting=args.max_waiting, max_stop=args.max_stop,
          max_body_bytes=args.max_body_bytes)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error: ...` line and exit status 2 (a UsageError), not usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _number(allowed: Range) -> Callable[[str], int | float]:
    """An argparse type: the flag's value parsed and range-checked; argparse names the flag in the error."""

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if allowed.integer else float(text)
        except ValueError:  # "abc", or "2.5" for a whole number
            raise argparse.ArgumentTypeError(f"{allowed.describe()}, got {text!r}") from None
        if not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"{allowed.describe()}, got {text!r}")
        return value

    return parse


# Every numeric flag's range (a test walks the parser to check that none is missing), except the sampling
# settings, which SamplingSettings checks (for the API and the server too) before the model loads.
SAMPLING_FLAGS = ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed")
THREADS = _number(ints(0, MAX_THREADS))  # 0: torch's default
WORKERS = _number(ints(1, MAX_THREADS))
BATCH = _number(ints(1, MAX_BATCH))
BLOCK = _number(ints(1, 2**24))
VOCAB = _number(ints(1, 2**32))  # ids are stored as at most uint32
STEPS = _number(ints(1, INT64_MAX))
FLOPS = _number(floats(0.0))


def _sampling_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens up to this mass")
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")


def _loading_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", choices=["best", "last"], default="best", help="which weights to load")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: the precision policy for inference (docs/precision.md)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (for debugging)")
    p.add_argument("--threads", type=THREADS, default=0, help="CPU threads (0: torch's default)")
    _quantize_flag(p)


def _quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: weight-only int8 matrices (a quarter of fp32's bytes per token; docs/precision.md)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="scratchgpt", description="GPT from scratch: prepare, train, sample.")
    p.add_argument("--version", action="version", version=f"scratchgpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("prepare", help="tokenize a corpus into data/<name>/ (train.bin, val.bin, meta.json)")
    pp.add_argument("dataset", choices=["shakespeare_char", "text", "chat"],
                    help="chat: JSONL conversations ({\"messages\": [...]} per line) for fine-tuning RUN")
    pp.add_argument("--run", metavar="RUN_DIR",
                    help="chat: the run to fine-tune (its tokenizer gets the chat template; its context bounds a "
                         "conversation)")
    pp.add_argument("--input", nargs="+", action="extend", metavar="PATH",
                    help="text: .txt, .jsonl or .parquet files, directories of them, or hf:DATASET (streamed into "
                         "shards unless it is one small text file); shakespeare_char: input.txt, else "
                         "$SCRATCHGPT_TINYSHAKESPEARE, else download")
    pp.add_argument("--out", help="output directory (default data/<name>): new, empty, or prepared data (replaced; "
                                  "other files in it are kept)")
    pp.add_argument("--force", action="store_true",
                    help="replace prepared data of the other format (text data with chat data, or back)")
    pp.add_argument("--tokenizer", default="char",
                    help="char | word | bpe | spm (learned from the text) | gpt2 | DIR from `tokenizer train`")
    pp.add_argument("--vocab-size", type=VOCAB, help="vocabulary size of bpe and spm (default 4096); caps word")
    pp.add_argument("--val-fraction", type=_number(floats(0.0, 1.0, True, True)), default=0.1,
                    help="share kept for validation: the end of one small file, else that share of documents")
    pp.add_argument("--block-size", type=BLOCK, default=8, help="refuse text whose splits are shorter than one block")
    pp.add_argument("--text-field", help="JSONL field / Parquet or dataset column holding the text (default text)")
    pp.add_argument("--txt-docs", choices=["paragraph", "file", "line"],
                    help="what a document is in a .txt file: blank-line separated blocks (default), the file, a line")
    pp.add_argument("--shard-tokens", type=STEPS, help="tokens per shard file (default 100,000,000)")
    pp.add_argument("--workers", type=WORKERS, help="tokenizer processes (default: every core)")
    pp.add_argument("--hf-config", help="configuration of an hf:DATASET input (e.g. sample-10BT)")
    pp.add_argument("--hf-split", help="split of an hf:DATASET input (default train)")

    pt = sub.add_parser("train", help="train a model from a recipe; --section.key=value overrides any key")
    pt.add_argument("config", nargs="?", metavar="recipe",
                    help="a named recipe (e.g. shakespeare_char_cpu, lecture/1_bigram: `scratchgpt recipes`) or a "
                         "TOML file, which wins")
    pt.add_argument("--resume", metavar="RUN_DIR", help="continue exactly from a run directory")
    pt.add_argument("--out", help="run directory (default runs/<data dir name>_<recipe>, or runs/<recipe> when "
                                  "the recipe's name contains the data directory's)")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.add_argument("--force", action="store_true",
                    help="replace the run already in the run directory (it stays until the new run's first checkpoint)")

    pb = sub.add_parser("bench", help="training speed of a recipe on random tokens: tokens/s, ms/step, MFU, memory")
    pb.add_argument("config", metavar="recipe",
                    help="a named recipe (e.g. gpt2_124m) or a TOML file; --section.key=value overrides any key")
    pb.add_argument("--steps", type=STEPS, default=20, help="timed steps")
    pb.add_argument("--warmup", type=_number(ints(0)), default=5, help="untimed steps first (torch.compile compiles here)")
    pb.add_argument("--batch-size", type=BATCH, default=None, help="train.batch_size for this run")
    pb.add_argument("--device", default=None, help="train.device for this run: auto | cpu | cuda | mps")
    pb.add_argument("--peak-flops", type=FLOPS, default=None,
                    help="the device's peak FLOP/s, for MFU (default train.peak_flops; 0 or unset: no MFU)")

    ps = sub.add_parser("sample", help="stream text from a trained run")
    ps.add_argument("run_dir")
    ps.add_argument("--prompt", help="text to continue (default: a newline)")
    ps.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    _sampling_flags(ps, max_new_tokens=500)
    ps.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    ps.add_argument("--ignore-eos", action="store_true",
                    help="go on past <|endoftext|> (byte-level tokenizers) instead of ending the text there")
    ps.add_argument("--window", choices=["full", "half"], default="full",
                    help="past the block size: keep the last block every token (full, the lecture's) or slide "
                         "by half-blocks (half: several times faster for long generations)")
    ps.add_argument("--num-samples", type=_number(ints(1, 4096)), default=1, help="samples of the prompt, generated as one batch")
    ps.add_argument("--interactive", action="store_true",
                    help="a REPL that keeps continuing what you type; /temperature 0.5 etc. change settings")
    _loading_flags(ps)

    pc = sub.add_parser("chat", help="chat in the terminal with a run fine-tuned on conversations (data.format = chat)")
    pc.add_argument("run_dir")
    pc.add_argument("--system", help="a system message to start every conversation with (/system changes it)")
    _sampling_flags(pc, max_new_tokens=300)
    _loading_flags(pc)

    pv = sub.add_parser("serve", help="a playground page and an OpenAI-compatible API for a run (needs the serve extra)")
    pv.add_argument("run_dir")
    pv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    pv.add_argument("--port", type=_number(ints(1, 65535)), default=8000,
                    help="TCP port, 1 to 65535 (0, any free port, is refused: nobody could be told which)")
    pv.add_argument("--max-batch", type=_number(ints(1, 4096)), default=32,
                    help="sequences decoded together (KV-cache lanes)")
    pv.add_argument("--max-tokens-cap", type=_number(ints(1, MAX_NEW_TOKENS_CAP)), default=1024,
                    help="the most max_tokens a request may ask for")
    pv.add_argument("--max-n", type=_number(ints(1, 4096)), default=8,
                    help="the most samples (n) a request may ask for")
    pv.add_argument("--max-prompt-tokens", type=_number(ints(1, 2**24)), default=4096,
                    help="the longest prompt accepted, in tokens")
    pv.add_argument("--max-waiting", type=_number(ints(1, 2**20)), default=256,
                    help="queued requests beyond which new ones get a 503")
    pv.add_argument("--max-stop", type=_number(ints(1, 1024)), default=16,
                    help="stop strings a request may give (OpenAI allows 4; harnesses add <|endoftext|> to a task's)")
    pv.add_argument("--max-body-bytes", type=_number(ints(1024, 2**31)), default=4 * 2**20,
                    help="a request body larger than this is answered 413 before it is read whole")
    _loading_flags(pv)

    pq = sub.add_parser("eval", help="score text with a run: loss, perplexity, bits per byte; multiple-choice accuracy")
    pq.add_argument("run_dir")
    pq.add_argument("--text", nargs="+", action="extend", metavar="FILE",
                    help="UTF-8 text files, each scored whole with a sliding window (and their total)")
    pq.add_argument("--choices", metavar="FILE.jsonl",
                    help='multiple choice: lines of {"context": str, "choices": [str, ...], "label": int}')
    pq.add_argument("--stride", type=_number(ints(1, 2**24)), default=None,
                    help="tokens each window moves on (default: the block size, non-overlapping windows, as the "
                         "training run's full val loss; smaller gives each token more context)")
    pq.add_argument("--batch-size", type=BATCH, default=8, help="windows (or choices) per forward pass")
    pq.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    pq.add_argument("--quiet", action="store_true", help="no progress bar")
    pq.add_argument("--which", choices=["best", "last"], default="best", help="which weights to score with")
    pq.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    pq.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="auto: the precision policy for inference (docs/precision.md)")
    pq.add_argument("--threads", type=THREADS, default=0, help="CPU threads (0: torch's default)")
    _quantize_flag(pq)

    pe = sub.add_parser("export", help="write a run as a Hugging Face GPT-2 directory (transformers loads it)")
    pe.add_argument("run_dir")
    pe.add_argument("--format", choices=["hf"], default="hf", help="hf: config.json + model.safetensors (+ tokenizer)")
    pe.add_argument("--out", required=True, help="directory to write (written whole or not at all)")
    pe.add_argument("--which", choices=["best", "last"], default="best", help="which weights to export")
    pe.add_argument("--force", action="store_true", help="replace an export already in --out (nothing else)")

    pl = sub.add_parser("lecture", help="replay the lecture: train its seven steps (bigram to the scaled GPT), "
                                        "write docs/lecture/results.md and progression.png; resumable")
    pl.add_argument("--budget", choices=["cpu", "gpu", "tiny"], default="cpu", metavar="{cpu,gpu}",
                    help="cpu: fits a 2-core CPU (step 7 shrunk); gpu: the lecture's own sizes (default cpu)")
    pl.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    pl.add_argument("--data", help="prepared data directory (default data/shakespeare_char, from the recipes)")
    pl.add_argument("--runs", default="runs/lecture", help="run directories go to RUNS/<budget>/<step>")
    pl.add_argument("--docs", help="where results.md and progression.png go (default docs/lecture, "
                                   "docs/lecture/<budget> for a budget other than cpu)")
    pl.add_argument("--quiet", action="store_true", help="no progress bars")
    pl.add_argument("--notebook", metavar="DIR",
                    help="instead of training: write the lecture as a notebook, DIR/lecture.ipynb (outputs included)")

    pr = sub.add_parser("recipes", help="list the named recipes (what each trains, on what, how long), or show one")
    rr = pr.add_subparsers(dest="action")
    rs = rr.add_parser("show", help="print a recipe's TOML, to copy and edit: scratchgpt recipes show NAME > mine.toml")
    rs.add_argument("name", help="a recipe's name, e.g. shakespeare_char_cpu or lecture/1_bigram")

    pd = sub.add_parser("demo", help="chat: fine-tune a small char model on synthetic conversations and score "
                                     "it on held-out words (2-core CPU, about 7 minutes; no network given a corpus)")
    pd.add_argument("demo", choices=["chat"])
    pd.add_argument("--corpus", metavar="PATH",
                    help="tiny Shakespeare's input.txt (default $SCRATCHGPT_TINYSHAKESPEARE, else "
                         "DATA/shakespeare_char/input.txt, else downloaded there)")
    pd.add_argument("--data", default="data", help="where the demo's data directories go (default data)")
    pd.add_argument("--runs", default="runs", help="where its two run directories go (default runs)")
    pd.add_argument("--budget", choices=["full", "tiny"], default="full", metavar="{full}",
                    help="full: the measured demo (tiny: a few steps, for tests)")
    pd.add_argument("--quiet", action="store_true", help="no progress bars")

    pk = sub.add_parser("tokenizer", help="train our byte-level BPE, or compare tokenizers on a text")
    kk = pk.add_subparsers(dest="action", required=True)
    kt = kk.add_parser("train", help="learn a byte-level BPE vocabulary; writes DIR/tokenizer.json")
    kt.add_argument("--input", nargs="+", action="extend", required=True, metavar="FILE", help="UTF-8 text files")
    kt.add_argument("--vocab-size", type=VOCAB, required=True, help="tokens in all: 256 bytes + merges + specials")
    kt.add_argument("--out", required=True, metavar="DIR", help="directory for tokenizer.json")
    kt.add_argument("--special", action="append", metavar="TOKEN",
                    help="a special token (repeatable; default <|endoftext|>)")
    kt.add_argument("--pattern", choices=["gpt4", "gpt2"], default="gpt4", help="pre-split regex (default gpt4)")
    kc = kk.add_parser("compare", help="vocabulary size, tokens and characters per token of char, word, our BPE, "
                                       "SentencePiece and GPT-2 on one text")
    kc.add_argument("--input", required=True, metavar="FILE", help="a UTF-8 text file")
    kc.add_argument("--vocab-size", type=_number(ints(257, 2**32)), default=4096, help="vocabulary of our BPE and SentencePiece")

    pi = sub.add_parser("import-hf", help="write a run directory from GPT-2 weights (a hub name or a local directory)")
    pi.add_argument("source", help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a Hugging Face GPT-2 directory")
    pi.add_argument("--out", help="run directory (default runs/<source name>)")
    pi.add_argument("--force", action="store_true", help="replace a run already in --out (nothing else)")
    return p


def main(argv: list[str] | None = None) -> int:
    launch = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command in ("train", "bench"):
            bad = [a for a in rest if not (a.startswith("--") and "." in a.split("=", 1)[0])]
            if bad:
                parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like --train.max_iters=2000)")
            code = _cmd_train(args, rest, launch) if args.command == "train" else _cmd_bench(args, rest)
        else:
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            commands = {"prepare": _cmd_prepare, "export": _cmd_export, "import-hf": _cmd_import_hf,
                        "tokenizer": _cmd_tokenizer, "lecture": _cmd_lecture, "serve": _cmd_serve,
                        "sample": _cmd_sample, "eval": _cmd_eval, "chat": _cmd_chat, "recipes": _cmd_recipes,
                        "demo": _cmd_demo}
            code = commands[args.command](args)
        sys.stdout.flush()  # here, so that a reader that went away is noticed below and not at exit
        return code
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C outside training, or a second signal during it (train/stop.py)
        print(f"error: {e or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except BrokenPipeError:  # `scratchgpt sample ... | head` closed our stdout: not an error
        _stdout_to_devnull()
        return 0
    except OSError as e:  # the last resort for a full or read-only disk that no writer turned into a sentence
        if e.errno not in DISK_ERRNOS:
            raise
        where = f"'{e.filename}': " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _stdout_to_devnull() -> None:
    """After a broken pipe, what is still buffered for stdout goes nowhere: the interpreter flushes stdout at
    exit, and that second failed write would print "Exception ignored ... BrokenPipeError" (Python's advice,
    in the signal module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())

"""`scratchgpt bench`: a table of tokens/s, ms/step, MFU and peak memory on random tokens; MFU in training logs."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import tiny_config
from scratchgpt.bench import bench_train, format_table
from scratchgpt.cli import main as cli_main
from scratchgpt.config import from_dict
from scratchgpt.errors import UserError
from scratchgpt.train import train


def test_bench_reports_speed_mfu_and_memory(small_text_dir):
    start = time.perf_counter()
    r = bench_train(tiny_config(small_text_dir, threads=1), steps=2, warmup=1, peak_flops=1e12)
    wall = time.perf_counter() - start
    assert r.steps == 2 and r.memory_kind in ("rss", "n/a") and r.final_loss > 0
    # the timed steps lie inside the call: 2 steps x batch 4 x block 16 tokens took less than its wall time
    assert r.tokens_per_s > 2 * 4 * 16 / wall and r.ms_per_step < 1000 * wall / 2
    # MFU against the FLOPs of this model counted by hand: 6 per matmul weight + attention's 12 L C T
    vocab = json.loads((small_text_dir / "meta.json").read_text())["vocab_size"]
    block = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16 + 2 * 16  # c_attn, c_proj, c_fc, mlp c_proj, two LayerNorm gains
    n = vocab * 16 + 2 * block + 16  # tied token table (the head), two blocks, ln_f; positions are a lookup
    assert r.mfu == pytest.approx(r.tokens_per_s * (6 * n + 12 * 2 * 16 * 16) / 1e12, rel=1e-9)
    table = format_table([r]).splitlines()
    assert "tokens/s" in table[0] and "MFU" in table[0] and "peak memory" in table[0]
    no_peak = bench_train(tiny_config(small_text_dir, threads=1), steps=1, warmup=0)
    assert no_peak.mfu is None and "n/a" in format_table([no_peak])


def test_bench_command_needs_no_data_but_a_vocabulary(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndir = "nowhere"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 8\nblock_size = 8\n'
                      '[train]\nbatch_size = 2\ndevice = "cpu"\nthreads = 1\n', encoding="utf-8")
    assert cli_main(["bench", str(recipe), "--steps", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'nowhere' is not prepared") and "--model.vocab_size" in err and "Traceback" not in err
    assert cli_main(["bench", str(recipe), "--steps", "2", "--warmup", "1", "--batch-size", "3",
                     "--model.vocab_size=17", "--peak-flops", "1e12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("config") and "3 x 8 x 1" in out[2] and "%" in out[2]
    with pytest.raises(UserError, match="positive number of steps"):
        bench_train(from_dict({"model": {"vocab_size": 5}}), steps=0)


def test_training_logs_mfu_when_a_peak_is_given(small_text_dir, tmp_path):
    run = train(tiny_config(small_text_dir, max_iters=2, eval_interval=2, threads=1, peak_flops=1e12),
                out_dir=tmp_path / "r", progress=False).run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["mfu"] < 1 for r in rows if r["kind"] == "train")
    plain = train(tiny_config(small_text_dir, max_iters=1, eval_interval=1, threads=1), out_dir=tmp_path / "p",
                  progress=False).run_dir
    assert "mfu" not in (plain / "metrics.jsonl").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_with_compile_bf16_and_fused_adamw():
    cfg = from_dict({"model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 256, "vocab_size": 65},
                     "train": {"batch_size": 16, "device": "cuda", "compile": True, "dtype": "bfloat16"}})
    r = bench_train(cfg, steps=5, warmup=3, peak_flops=1e15)
    assert r.memory_kind == "cuda" and r.peak_memory > 0 and r.tokens_per_s > 0 and r.mfu > 0

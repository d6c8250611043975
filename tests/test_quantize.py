"""Weight-only int8: each layer computes with its dequantized weight (kernel and fallback alike), every matrix of
a model is swapped (the tied head too), the commands take --quantize, and a trained char model loses at most
0.01 nats of val loss to it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scratchgpt
from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.config import Config, DataConfig, ModelConfig
from scratchgpt.errors import UserError
from scratchgpt.models import build_model
from scratchgpt.quantize import Int8Linear, quantize, weight_bytes
from scratchgpt.tokenizers import CharTokenizer
from scratchgpt.train import train


@pytest.mark.parametrize("width", [64, 48])  # 64: the kernel; 48: not a multiple of 32, the fallback
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_layer_computes_with_its_dequantized_weight(width, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(width, 40, bias=True).to(dtype)
    q = Int8Linear(lin)
    assert q.kernel == (width % 32 == 0)
    w = lin.weight.detach().float()
    err = (q.dequantized().float() - w).abs()
    step = w.abs().amax(dim=1, keepdim=True) / 127
    # half a step per row, plus (in bf16) the scale's own rounding times the largest integer weight
    bound = step * (0.5 + (127 * 2**-8 if dtype == torch.bfloat16 else 1e-5))
    assert bool((err <= bound).all())
    x = torch.randn(3, 5, width).to(dtype)
    want = F.linear(x.float(), q.dequantized().float(), lin.bias.detach().float())  # (3, 5, 40)
    got = q(x)
    assert got.shape == (3, 5, 40) and got.dtype == dtype
    # the kernel rounds activations to bf16: the error that makes, relative to the output's scale
    torch.testing.assert_close(got.float(), want, atol=2e-2 * float(want.abs().max()), rtol=0)


def test_an_all_zero_row_stays_zero():
    lin = nn.Linear(32, 4, bias=False)
    with torch.no_grad():
        lin.weight[1] = 0
    q = Int8Linear(lin)
    assert bool((q.dequantized()[1] == 0).all()) and torch.isfinite(q.scale).all()


def test_every_matrix_is_swapped_and_the_tied_head_gets_its_own_copy():
    m = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65)
    model = build_model(m).eval()
    fp32_bytes = weight_bytes(model)
    wte = model.wte.weight.detach().clone()
    quantize(model, "int8")
    assert not [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    assert isinstance(model.lm_head, Int8Linear) and torch.equal(model.wte.weight, wte)
    assert weight_bytes(model) < fp32_bytes / 3.5  # int8 and a scale per row instead of four bytes a weight
    logits, _ = model(torch.randint(65, (2, 16)))
    assert logits.shape == (2, 16, 65) and torch.isfinite(logits).all()
    with pytest.raises(ValueError):
        quantize(model, "int4")


def test_training_refuses_quantized_weights():
    with pytest.raises(UserError, match="inference"):
        scratchgpt.runtime.setup("cpu", "auto", use="train", quantize="int8")


@pytest.fixture(scope="module")
def trained_char_run(shakespeare_dir, tmp_path_factory):
    """A char model trained on tiny Shakespeare for a few hundred steps (64 wide: the kernel's path)."""
    cfg = tiny_config(shakespeare_dir, max_iters=300, eval_interval=300, batch_size=16, learning_rate=3e-3,
                      log_interval=100)
    from dataclasses import replace

    cfg = replace(cfg, model=replace(cfg.model, n_embd=64, n_head=4, block_size=64, dropout=0.0))
    return train(cfg, out_dir=tmp_path_factory.mktemp("q") / "run", progress=False).run_dir


def test_int8_costs_at_most_a_hundredth_of_a_nat_on_a_trained_char_model(trained_char_run, shakespeare_dir,
                                                                            tmp_path, capsys):
    tok = ckpt.read_tokenizer(trained_char_run)
    val = np.fromfile(shakespeare_dir / "val.bin", dtype=np.uint16)[:20_000].tolist()
    (tmp_path / "val.txt").write_text(tok.decode(val), encoding="utf-8")
    losses = {}
    for q in ("none", "int8"):
        rc = main(["eval", str(trained_char_run), "--text", str(tmp_path / "val.txt"), "--json", "--quiet",
                   "--device", "cpu", "--dtype", "float32", "--quantize", q, "--batch-size", "64"])
        assert rc == 0
        losses[q] = json.loads(capsys.readouterr().out)["texts"][0]["loss"]
    assert losses["none"] < 2.6  # it learned something: the test measures a real model's loss
    assert losses["int8"] - losses["none"] <= 0.01, losses


def test_sample_and_the_api_give_the_same_int8_text(trained_char_run, capsys):
    lm = scratchgpt.load(trained_char_run, quantize="int8", dtype="float32")
    assert isinstance(lm.model.lm_head, Int8Linear)
    text = lm.generate("ROMEO:", max_new_tokens=40, seed=3)
    rc = main(["sample", str(trained_char_run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3",
               "--quantize", "int8", "--dtype", "float32"])
    assert rc == 0 and capsys.readouterr().out == "ROMEO:" + text + "\n"


def test_a_run_without_a_kernel_width_still_quantizes(tmp_path):
    """16 wide (not a multiple of 32): every layer takes the dequantizing path and the model still runs."""
    m = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=5)
    model = build_model(m)
    ckpt.write_run_header(tmp_path, Config(name="q", data=DataConfig(dir=""), model=m), CharTokenizer("abcde"),
                          model.num_params())
    ckpt.save_weights(tmp_path / ckpt.MODEL, model, step=1)
    lm = scratchgpt.load(tmp_path, quantize="int8")
    assert not lm.model.lm_head.kernel
    assert len(lm.generate("ab", max_new_tokens=5, seed=0)) == 5

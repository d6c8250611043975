"""The CPU inference kernels (cpu_linear.py): each layer computes what nn.Linear computes (fp32 through oneDNN's
reordered weight, bf16 by ATen's matrix-vector product at one row and oneDNN at several), a model's every
matrix is swapped by the inference path, and decoding through them equals the uncached reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchgpt.cpu_linear import CPULinear, use_cpu_kernels
from scratchgpt.generate import Engine
from scratchgpt.models import ModelConfig, build_model
from scratchgpt.runtime import Runtime


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_layer_equals_nn_linear(rows, bias):
    torch.manual_seed(0)
    lin = nn.Linear(96, 130, bias=bias)
    fast = CPULinear(lin)
    x = torch.randn(2, rows, 96)
    torch.testing.assert_close(fast(x), lin(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 4])
def test_bf16_layer_is_the_kernel_it_names(rows):
    """One row: ATen's product, bit for bit; several: oneDNN's, as nn.Linear computes them."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 200).to(torch.bfloat16)
    fast = CPULinear(lin)
    assert fast.packed is None and fast.weight.dtype == torch.bfloat16
    x = torch.randn(rows, 64).to(torch.bfloat16)
    with torch.backends.mkldnn.flags(enabled=rows > 1):
        want = F.linear(x, lin.weight, lin.bias)
    assert torch.equal(fast(x), want)


def test_the_inference_path_swaps_every_matrix_and_decodes_like_the_reference():
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    fast = Runtime(torch.device("cpu"), torch.float32, use="infer").prepare(copy.deepcopy(plain))
    assert not [m for m in fast.modules() if type(m) is nn.Linear]
    assert isinstance(fast.lm_head, CPULinear) and fast.wte.weight.dtype == torch.float32
    idx = torch.randint(50, (3, 16))
    torch.testing.assert_close(fast(idx)[0], plain(idx)[0], atol=1e-5, rtol=1e-5)
    prompts = [[1, 2, 3], [4, 5]]
    engine = Engine(fast)
    got = engine.generate_ids(prompts, max_new_tokens=20, temperature=0)  # past the block: sliding too
    assert got == engine.generate_ids(prompts, max_new_tokens=20, temperature=0, use_cache=False)


def test_models_off_the_cpu_are_left_alone():
    model = nn.Sequential(nn.Linear(4, 4)).to("meta")
    assert type(use_cpu_kernels(model)[0]) is nn.Linear

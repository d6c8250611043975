"""The model switches the lecture's steps need, each against what it claims, the lecture's recipes, and why
attention is scaled by 1/sqrt(head size)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchgpt.config import load_recipe
from scratchgpt.lecture import STEPS
from scratchgpt.models import GPT, BigramLanguageModel, GPTConfig, build_model
from scratchgpt.models.gpt import MLP, Block, CausalSelfAttention, RMSNorm

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "lecture"


def cfg(**kw) -> GPTConfig:
    base = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 8, "vocab_size": 65, "dropout": 0.0}
    base.update(kw)
    return GPTConfig(**base)


def zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def lecture_head(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """The lecture's `Head.forward`, written out: k, q, v; scaled affinities; mask; softmax; aggregate."""
    B, T, C = x.shape
    k, q, v = x @ wk.T, x @ wq.T, x @ wv.T  # each (B, T, hs)
    wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
    wei = wei.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    return F.softmax(wei, dim=-1) @ v  # (B, T, hs)


# ---- the defaults stay nanoGPT's model (the lecture's are in configs/lecture/) --------------------------

def nanogpt_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's model.py forward (bias off), written out from the module's own weights: token + position
    embeddings; per block x + attn(ln_1(x)) and x + mlp(ln_2(x)) with an exact-GELU 4x MLP; ln_f; the head
    tied to the token table."""
    B, T = idx.shape
    C, nh = model.config.n_embd, model.config.n_head
    x = model.wte.weight[idx] + model.wpe.weight[:T]  # (B, T, C)
    causal = torch.ones(T, T).tril().bool()
    for blk in model.h:
        h = F.layer_norm(x, (C,), blk.ln_1.weight)
        q, k, v = (h @ blk.attn.c_attn.weight.T).split(C, dim=2)
        q, k, v = (z.view(B, T, nh, C // nh).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1) / math.sqrt(C // nh)).masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, C) @ blk.attn.c_proj.weight.T
        h = F.layer_norm(x, (C,), blk.ln_2.weight)
        x = x + F.gelu(h @ blk.mlp.c_fc.weight.T) @ blk.mlp.c_proj.weight.T
    return F.layer_norm(x, (C,), model.ln_f.weight) @ model.wte.weight.T  # (B, T, vocab)


def test_the_default_model_computes_nanogpts_gpt():
    """Every switch left at its default builds nanoGPT's model (GELU, tied head, no bias), not the lecture's
    (ReLU, untied head with biases: its recipes under configs/lecture/ set those)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=65)).eval()
    assert model.lm_head.weight is model.wte.weight and not any(n.endswith("bias") for n, _ in model.named_parameters())
    idx = torch.randint(65, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], nanogpt_forward(model, idx), atol=1e-5, rtol=0)


# ---- residual off ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_residual_off_block_output_does_not_contain_its_input(norm):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    on, off = Block(cfg(norm=norm, mlp="relu")), Block(cfg(norm=norm, mlp="relu", residual=False))
    for block in (on, off):
        zero_(block.attn)
        zero_(block.mlp)  # attention and MLP now both output exactly zero
        block.eval()
    with torch.no_grad():
        assert torch.equal(on(x), x)  # the residual stream carries the input through
        assert torch.equal(off(x), torch.zeros_like(x))  # nothing carries it: out = mlp(attn(x))


def test_residual_off_block_is_the_composition_of_its_parts():
    torch.manual_seed(1)
    block = Block(cfg(norm="none", mlp="relu", residual=False)).eval()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        assert torch.allclose(block(x), block.mlp(block.attn(x)), atol=1e-6)


# ---- no MLP, no LayerNorm, no projection -----------------------------------------------------------------

def test_no_mlp_block_has_no_mlp_parameters():
    torch.manual_seed(2)
    block = Block(cfg(mlp="none")).eval()
    assert block.mlp is None and block.ln_2 is None
    assert not [n for n, _ in block.named_parameters() if "mlp" in n or "ln_2" in n]
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.attn(block.ln_1(x)), atol=1e-6)


def test_norm_none_has_no_normalisation_modules():
    model = GPT(cfg(norm="none"))
    assert not [m for m in model.modules() if isinstance(m, (nn.LayerNorm, RMSNorm))]
    assert isinstance(model.ln_f, nn.Identity)
    assert not [n for n, _ in model.named_parameters() if ".ln_" in n or n.startswith("ln_")]
    with_ln = GPT(cfg())
    assert sum(isinstance(m, nn.LayerNorm) for m in with_ln.modules()) == 2 * 2 + 1  # ln_1, ln_2 per block, ln_f


def test_attn_proj_off_has_no_c_proj():
    attn = CausalSelfAttention(cfg(attn_proj=False))
    assert attn.c_proj is None
    assert [n for n, _ in attn.named_parameters()] == ["c_attn.weight"]
    n_on = sum(p.numel() for p in GPT(cfg()).parameters())
    n_off = sum(p.numel() for p in GPT(cfg(attn_proj=False)).parameters())
    assert n_on - n_off == 2 * 32 * 32  # one 32 x 32 projection per layer


def test_torch_init_keeps_each_modules_pytorch_default():
    torch.manual_seed(6)
    lecture, gpt2 = GPT(cfg(init_scheme="torch", tie_weights=False)), GPT(cfg(tie_weights=False))
    assert 0.9 < lecture.wte.weight.std().item() < 1.1  # nn.Embedding: N(0, 1)
    w = lecture.h[0].attn.c_attn.weight
    assert w.abs().max().item() <= 32**-0.5  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.9 * 32**-0.5 / 3**0.5 < w.std().item() < 1.1 * 32**-0.5 / 3**0.5
    assert torch.equal(lecture.h[0].ln_1.weight, torch.ones(32))
    assert 0.018 < gpt2.wte.weight.std().item() < 0.022  # the default stays GPT-2's N(0, 0.02)
    torch.manual_seed(7)
    by_hand = nn.Embedding(65, 32)  # the same draws, in the same order, as the model's first module
    torch.manual_seed(7)
    assert torch.equal(GPT(cfg(init_scheme="torch")).wte.weight, by_hand.weight)


# ---- single head and multi-head are the lecture's Head and MultiHeadAttention ---------------------------

def test_single_head_equals_the_lectures_head():
    torch.manual_seed(3)
    attn = CausalSelfAttention(cfg(n_head=1, attn_proj=False)).eval()
    with torch.no_grad():
        attn.c_attn.weight.normal_(0, 0.3)
        wq, wk, wv = attn.c_attn.weight.split(32, dim=0)  # head size = n_embd = 32, as in the lecture's step 2
        x = torch.randn(3, 8, 32)
        assert torch.allclose(attn(x), lecture_head(x, wq, wk, wv), atol=1e-5)


def test_multi_head_without_projection_is_the_concatenation_of_heads():
    torch.manual_seed(4)
    attn = CausalSelfAttention(cfg(n_head=4, attn_proj=False)).eval()
    with torch.no_grad():
        attn.c_attn.weight.normal_(0, 0.3)
        wq, wk, wv = attn.c_attn.weight.split(32, dim=0)
        x = torch.randn(3, 8, 32)
        heads = [lecture_head(x, wq[h * 8:(h + 1) * 8], wk[h * 8:(h + 1) * 8], wv[h * 8:(h + 1) * 8]) for h in range(4)]
        assert torch.allclose(attn(x), torch.cat(heads, dim=-1), atol=1e-5)  # 4 heads of 8 -> 32 wide


def test_mlp_proj_off_is_the_lectures_first_feed_forward():
    torch.manual_seed(8)
    mlp = MLP(cfg(mlp="relu", mlp_proj=False, bias="lecture")).eval()
    assert mlp.c_proj is None and tuple(mlp.c_fc.weight.shape) == (32, 32)  # Linear(32, 32), no 4x, no projection
    x = torch.randn(2, 8, 32)
    with torch.no_grad():  # the lecture's step-4 FeedForward: nn.Sequential(nn.Linear(n_embd, n_embd), nn.ReLU())
        assert torch.allclose(mlp(x), F.relu(x @ mlp.c_fc.weight.T + mlp.c_fc.bias), atol=1e-6)
    assert [n for n, _ in MLP(cfg(mlp="relu")).named_parameters()] == ["c_fc.weight", "c_proj.weight"]


# ---- why 1/sqrt(head size) ---------------------------------------------------------------------------------

def test_unscaled_attention_is_near_one_hot_and_scaled_keeps_unit_variance():
    torch.manual_seed(1337)
    B, T, hs = 16, 16, 1024
    q, k = torch.randn(B, T, hs), torch.randn(B, T, hs)  # unit-variance queries and keys
    unscaled = q @ k.transpose(-2, -1)  # (B, T, T): each a sum of hs unit-variance products
    scaled = unscaled * hs**-0.5
    assert 0.8 * hs < unscaled.var().item() < 1.2 * hs  # variance grows with head size
    assert 0.8 < scaled.var().item() < 1.2  # ... and the scaling brings it back to 1
    p_unscaled, p_scaled = F.softmax(unscaled, dim=-1), F.softmax(scaled, dim=-1)
    assert p_unscaled.max(-1).values.mean().item() > 0.9  # softmax saturates: each query looks at one key
    assert p_scaled.max(-1).values.mean().item() < 0.5  # diffuse: information from many keys
    assert (p_scaled > 0.01).sum(-1).float().mean().item() > 8


def test_model_attention_is_scaled_by_inverse_sqrt_head_size():
    """The model's attention uses the scaled scores: it equals the explicit formula at a large head size."""
    torch.manual_seed(5)
    attn = CausalSelfAttention(GPTConfig(n_layer=1, n_head=1, n_embd=256, block_size=8, vocab_size=65,
                                         attn_proj=False)).eval()
    with torch.no_grad():
        attn.c_attn.weight.normal_(0, 256**-0.5)  # unit-variance q and k for unit-variance x
        wq, wk, wv = attn.c_attn.weight.split(256, dim=0)
        x = torch.randn(2, 8, 256)
        assert torch.allclose(attn(x), lecture_head(x, wq, wk, wv), atol=1e-5)
        unscaled = lecture_head(x, wq * 256**0.25, wk * 256**0.25, wv)  # q @ k^T without the 1/sqrt(hs)
        assert not torch.allclose(attn(x), unscaled, atol=1e-2)


# ---- the recipes build the lecture's steps ----------------------------------------------------------------

# step -> (layers, heads, width, block, attn c_proj, MLP, residual, LayerNorms, dropout)
EXPECTED = {
    "2_self_attention": (1, 1, 32, 8, False, False, False, False, 0.0),
    "3_multi_head": (1, 4, 32, 8, False, False, False, False, 0.0),
    "4_feed_forward": (1, 4, 32, 8, False, True, False, False, 0.0),
    "5_residual": (3, 4, 32, 8, True, True, True, False, 0.0),
    "6_layernorm": (3, 4, 32, 8, True, True, True, True, 0.0),
    "7_scaled_up": (6, 6, 384, 256, True, True, True, True, 0.2),
}


def test_bigram_recipe_is_the_lecture_bigram():
    c = load_recipe(RECIPES / "1_bigram.toml")
    model = build_model(replace(c.model, vocab_size=65))
    assert isinstance(model, BigramLanguageModel)
    assert sum(p.numel() for p in model.parameters()) == 65 * 65
    assert (c.train.max_iters, c.train.batch_size, c.train.learning_rate, c.model.block_size) == (3000, 32, 1e-2, 8)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lecture_recipe_builds_its_step(name):
    c = load_recipe(RECIPES / f"{name}.toml")
    m = c.model
    layers, heads, width, block, proj, mlp, residual, ln, dropout = EXPECTED[name]
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (layers, heads, width, block, dropout)
    model = build_model(replace(m, vocab_size=65))
    assert model.lm_head.weight is not model.wte.weight  # the lecture's lm_head is its own matrix
    assert m.init_scheme == "torch"  # the video's init: each module's PyTorch default
    blocks = list(model.h)
    assert all((b.attn.c_proj is not None) == proj for b in blocks)
    assert all((b.mlp is not None) == mlp for b in blocks)
    assert all(b.residual == residual for b in blocks)
    assert any(isinstance(x, nn.LayerNorm) for x in model.modules()) == ln
    if mlp:
        assert all(b.mlp.act is F.relu for b in blocks)  # the lecture's feed-forward uses ReLU
        # one Linear(C, C) in step 4; the 4x MLP with its projection from step 5
        assert all((b.mlp.c_proj is None) == (name == "4_feed_forward") for b in blocks)
    assert m.bias == "lecture"
    lr = 3e-4 if name == "7_scaled_up" else 1e-3
    assert (c.train.max_iters, c.train.learning_rate, c.train.lr_schedule) == (5000, lr, "constant")


# What the lecture's code builds at each step, counted as it counts (`sum(p.numel() for p in m.parameters())`,
# position table included), vocabulary 65. nn.Embedding(n, C) holds n*C; nn.Linear(i, o) holds i*o + o, but
# the lecture's key, query and value are nn.Linear(..., bias=False); nn.LayerNorm(C) holds 2C.
#   1 bigram.py: Embedding(65, 65)                                                                  4,225
#   2 tok 65*32 = 2,080; pos 8*32 = 256; one Head(32): key/query/value 3*32*32 = 3,072;
#     lm_head Linear(32, 65) = 32*65 + 65 = 2,145                                                   7,553
#   3 MultiHeadAttention(4, 8), concatenated, no proj yet: key/query/value 4*3*32*8 = 3,072       7,553
#   4 + FeedForward = Linear(32, 32) + ReLU: 32*32 + 32 = 1,056                                     8,609
#   5 3 Blocks, each key/query/value 3,072 + proj Linear(32, 32) 1,056 + FeedForward Linear(32, 128)
#     4,224 + Linear(128, 32) 4,128 = 12,480; x3 = 37,440; + tok 2,080 + pos 256 + lm_head 2,145     41,921
#   6 + ln1, ln2 per block (128, x3 = 384) and the final LayerNorm (64)                             42,369
#   7 gpt.py: tok 65*384 = 24,960; pos 256*384 = 98,304; per block key/query/value 3*384*384 = 442,368,
#     proj 384*384 + 384 = 147,840, FeedForward 384*1536 + 1536 + 1536*384 + 384 = 1,181,568,
#     ln1 + ln2 1,536: 1,773,312, x6 = 10,639,872; ln_f 768; lm_head 384*65 + 65 = 25,025     10,788,929
#     (the lecture prints "10.788929 M parameters")
LECTURE_PARAMS = {"1_bigram": 4_225, "2_self_attention": 7_553, "3_multi_head": 7_553, "4_feed_forward": 8_609,
                  "5_residual": 41_921, "6_layernorm": 42_369, "7_scaled_up": 10_788_929}


def test_every_step_has_a_lecture_count():
    assert list(LECTURE_PARAMS) == [s.name for s in STEPS]


@pytest.mark.parametrize("name", list(LECTURE_PARAMS))
def test_each_step_has_the_lectures_parameter_count(name):
    c = load_recipe(RECIPES / f"{name}.toml")  # at the recipe's own (the lecture's full) size
    with torch.device("meta"):  # shapes only: no memory, no init
        model = build_model(replace(c.model, vocab_size=65))
    assert sum(p.numel() for p in model.parameters()) == LECTURE_PARAMS[name]

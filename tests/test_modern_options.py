"""Modern options, each a config switch: rotary positions, RMSNorm, QK-norm, ReLU^2, untied head, no biases,
Muon; the defaults stay nanoGPT's model. Also the FLOPs estimate behind MFU."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.config import ConfigError, from_dict, to_dict
from scratchgpt.flops import flops_per_token, matmul_params, mfu
from scratchgpt.models import ModelConfig
from scratchgpt.models import gpt as gpt_module
from scratchgpt.models.gpt import GPT, MLP, GPTConfig, RMSNorm, apply_rope, rope_tables
from scratchgpt.optim import Muon, OptimizerSet, build_muon, configure_optimizer
from scratchgpt.train import train


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    base = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32, "vocab_size": 11}
    return GPT(GPTConfig(**{**base, **kw})).eval()


def test_defaults_are_the_lecture_gpt():
    c = GPTConfig()
    assert (c.pos_emb, c.norm, c.mlp, c.tie_weights, c.qk_norm, c.residual) == ("learned", "layernorm", "gelu", True, False, True)
    m = _model()
    assert isinstance(m.h[0].ln_1, torch.nn.LayerNorm) and m.wpe is not None and m.lm_head.weight is m.wte.weight
    assert from_dict({}).train.optimizer == "adamw"


@settings(max_examples=25, deadline=None)
@given(i=st.integers(0, 40), j=st.integers(0, 40), d=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_the_offset(i, j, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    cos, sin = rope_tables(8, 81, 10000.0, torch.device("cpu"))

    def score(a: int, b: int) -> float:
        return (apply_rope(q, cos[a:a + 1], sin[a:a + 1]) * apply_rope(k, cos[b:b + 1], sin[b:b + 1])).sum().item()

    assert score(i + d, j + d) == pytest.approx(score(i, j), abs=1e-4)


def test_rope_rotates_and_keeps_the_norm():
    cos, sin = rope_tables(8, 5, 10000.0, torch.device("cpu"))
    x = torch.randn(2, 3, 5, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0: no rotation
    assert not torch.allclose(y[..., 1, :], x[..., 1, :])


def test_rope_model_sees_relative_positions_only():
    """With rotary positions (and no learned table) shifting every position leaves the output unchanged."""
    m = _model(pos_emb="rope")
    idx = torch.randint(0, 11, (2, 9))
    a, _ = m(idx, positions=torch.arange(9))
    b, _ = m(idx, positions=torch.arange(13, 22))
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    learned = _model()  # learned positions do change with the shift
    assert not torch.allclose(learned(idx, positions=torch.arange(9))[0], learned(idx, positions=torch.arange(13, 22))[0])


def test_rmsnorm_matches_the_formula():
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
    x = torch.randn(3, 4, 6)
    manual = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), manual)
    m = _model(norm="rmsnorm")
    assert isinstance(m.h[0].ln_1, RMSNorm) and isinstance(m.ln_f, RMSNorm)
    assert not any(isinstance(mod, torch.nn.LayerNorm) for mod in m.modules())


def test_qk_norm_gives_unit_rms_queries_and_keys(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):
        seen.append((q, k))
        return real(q, k, v, *args, **kw)

    monkeypatch.setattr(gpt_module.F, "scaled_dot_product_attention", spy)
    for qk_norm in (True, False):
        seen.clear()
        _model(qk_norm=qk_norm, pos_emb="none")(torch.randint(0, 11, (2, 7)))
        rms = torch.stack([t.pow(2).mean(-1).sqrt() for q, k in seen for t in (q, k)])  # per head and position
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3) == qk_norm


# each MLP choice against the formula it names, written out independently of the model's table
REFERENCE_ACTIVATIONS = {
    "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
    "gelu_tanh": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))),
    "relu": lambda h: h.clamp(min=0),
    "relu2": lambda h: h.clamp(min=0) ** 2,
}


@pytest.mark.parametrize("act", sorted(REFERENCE_ACTIVATIONS))
def test_each_mlp_choice_applies_the_function_it_names(act):
    assert set(REFERENCE_ACTIVATIONS) | {"none"} == set(GPTConfig.choices()["mlp"])  # none: no MLP (below)
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(n_embd=8, n_head=2, vocab_size=5, mlp=act)).eval()
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), mlp.c_proj(REFERENCE_ACTIVATIONS[act](mlp.c_fc(x))))
    assert _model(mlp="none").h[0].mlp is None and _model(mlp="none").h[0].ln_2 is None


@pytest.mark.parametrize("norm, cls", [("layernorm", torch.nn.LayerNorm), ("rmsnorm", RMSNorm),
                                       ("none", torch.nn.Identity)])
def test_each_norm_choice_builds_its_module_everywhere(norm, cls):
    m = _model(norm=norm)
    norms = [m.ln_f] + [b.ln_1 for b in m.h] + [b.ln_2 for b in m.h]
    assert all(type(n) is cls for n in norms), norms


def test_no_bias_model_has_no_bias_parameters():
    assert not [n for n, _ in _model(bias=False).named_parameters() if n.endswith("bias")]
    with_bias = [n for n, _ in _model(bias=True).named_parameters() if n.endswith("bias")]
    assert "h.0.attn.c_attn.bias" in with_bias and "h.0.mlp.c_fc.bias" in with_bias


def test_untied_head_has_its_own_matrix_and_trains(small_text_dir, tmp_path):
    m = _model(tie_weights=False)
    assert m.lm_head.weight is not m.wte.weight and m.lm_head.weight.data_ptr() != m.wte.weight.data_ptr()
    assert matmul_params(m) == sum(p.numel() for p in m.parameters()) - m.wte.weight.numel() - m.wpe.weight.numel()
    base = tiny_config(small_text_dir, max_iters=8, eval_interval=8, threads=1)
    raw = to_dict(base)
    cfg = from_dict({**raw, "model": {**raw["model"], "tie_weights": False}})
    result = train(cfg, out_dir=tmp_path / "untied", progress=False)
    model, _, _ = ckpt.load_model(result.run_dir, which="last")
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    assert result.last_eval["val"] < math.log(model.config.vocab_size)  # it learned something


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    m = _model()
    t = from_dict({"train": {"optimizer": "muon"}}).train
    opt = configure_optimizer(m, t, torch.device("cpu"))
    assert isinstance(opt, OptimizerSet)
    adamw, muon = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in m.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in m.named_parameters() if n.startswith("h.") and p.dim() == 2}
    adam_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"wte.weight", "wpe.weight", "ln_f.weight"} <= adam_names and not adam_names & muon_names


def test_muon_run_resumes_exactly(small_text_dir, tmp_path):
    overrides = {"optimizer": "muon", "muon_lr": 0.05}
    cfg = tiny_config(small_text_dir, max_iters=6, eval_interval=3, lr_decay_iters=6, threads=1, **overrides)
    straight = train(cfg, out_dir=tmp_path / "a", progress=False)
    half = tiny_config(small_text_dir, max_iters=3, eval_interval=3, lr_decay_iters=6, threads=1, **overrides)
    train(half, out_dir=tmp_path / "b", progress=False)
    resumed = train(cfg, resume=tmp_path / "b", progress=False)
    assert resumed.last_eval == straight.last_eval
    a, _, _ = ckpt.load_model(tmp_path / "a", which="last")
    b, _, _ = ckpt.load_model(tmp_path / "b", which="last")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_muon_misuse_is_one_sentence():
    t = from_dict({"train": {"optimizer": "muon"}}).train
    with pytest.raises(ConfigError, match=r"Muon orthogonalizes 2-D matrices, but 'ln.weight' is 1-D"):
        build_muon([("ln.weight", torch.nn.Parameter(torch.ones(4)))], t, torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.arch = bigram has none"):
        from_dict({"model": {"arch": "bigram"}, "train": {"optimizer": "muon"}})


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_our_muon_is_torchs_in_bf16_and_close_in_fp32():
    """Our Muon is torch.optim.Muon step for step when it orthogonalizes in bf16 as torch's does (bit for
    bit, state included); in fp32 (CPUs without native bf16) it follows the same path within bf16's precision."""
    torch.manual_seed(0)
    weights = [torch.randn(32, 16), torch.randn(16, 48)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(4)]

    def run(opt_cls, **kw):
        ps = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = opt_cls(ps, lr=0.02, weight_decay=0.1, momentum=0.95, **kw)
        for g in grads:
            for p, gi in zip(ps, g, strict=True):
                p.grad = gi.clone()
            opt.step()
        return ps, opt

    theirs, topt = run(torch.optim.Muon)
    ours, oopt = run(Muon, ns_dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(topt.state[a]["momentum_buffer"], oopt.state[b]["momentum_buffer"])
    fp32, _ = run(Muon, ns_dtype=torch.float32)
    assert all(torch.allclose(a, b, atol=0.02 * 4 * 0.05, rtol=0) for a, b in zip(theirs, fp32, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(theirs, fp32, strict=True))  # it did orthogonalize in fp32


def test_flops_per_token_is_6n_plus_attention():
    m = _model()
    n = matmul_params(m)
    assert n == m.num_params()  # tied: the table counts once, as the head; positions are a lookup
    cfg = ModelConfig(**vars(m.config))
    assert flops_per_token(cfg, n) == 6 * n + 12 * 2 * 2 * 8 * 32
    assert flops_per_token(replace(cfg, arch="bigram"), n) == 6 * n  # no attention
    assert mfu(1000.0, 1e6, 2e9) == pytest.approx(0.5) and mfu(1000.0, 1e6, 0.0) == 0.0
    # GPT-2 124M at block 1024: about 0.87 GFLOP per token (nanoGPT's estimate uses the same formula)
    gpt2 = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    assert flops_per_token(gpt2, 124_000_000) == pytest.approx(6 * 124e6 + 12 * 12 * 768 * 1024)

"""The models: size, tying, GPT-2 init, initial loss, shapes, causality, and attention against references."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchgpt.models import GPT, BigramLanguageModel, GPTConfig, ModelConfig, build_model
from scratchgpt.models.gpt import CausalSelfAttention

# The default model at the lecture's final size: nanoGPT's model (GELU, tied head, no biases), not the lecture's
# (ReLU, untied head with a bias, bias = "lecture"; that one is configs/lecture/7_scaled_up.toml).
NANOGPT = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)


def tiny(**kw) -> GPTConfig:
    base = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 11, "dropout": 0.0}
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture(scope="module")
def nanogpt_model() -> GPT:
    torch.manual_seed(0)
    return GPT(NANOGPT)


class TinyCache:
    """The smallest KV cache attention accepts: per-layer keys/values concatenated along time."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.k:
            k, v = torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v  # (B, nh, S, hs)

    @property
    def pos(self) -> int:
        return self.k[0].size(2) if 0 in self.k else 0


# ---- size, tying, init ------------------------------------------------------------------------------

def test_default_model_at_the_lectures_size_is_nanogpts_10_65m(nanogpt_model):
    # nanoGPT's count (position embeddings excluded, tied head counted once); the lecture's own final model
    # prints 10.788929 M (tests/test_lecture_switches.py::test_each_step_has_the_lectures_parameter_count)
    assert nanogpt_model.num_params() == 10_646_784
    assert nanogpt_model.num_params(non_embedding=False) == 10_646_784 + 256 * 384
    assert f"{nanogpt_model.num_params() / 1e6:.2f}M" == "10.65M"


def test_lm_head_is_tied_to_token_embedding(nanogpt_model):
    assert nanogpt_model.lm_head.weight is nanogpt_model.wte.weight
    untied = GPT(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_gpt2_init_statistics(nanogpt_model):
    proj_std = 0.02 / math.sqrt(2 * NANOGPT.n_layer)
    stds = {"c_attn": [], "c_fc": [], "c_proj": []}
    for name, p in nanogpt_model.named_parameters():
        if name.endswith("c_proj.weight"):
            stds["c_proj"].append(p.std().item())
        elif name.endswith("weight") and p.dim() == 2 and "h." in name:
            stds[name.split(".")[-2]].append(p.std().item())
        if p.dim() < 2:  # LayerNorm gains
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert abs(p.mean().item()) < 1e-3, name
    assert len(stds["c_proj"]) == 2 * NANOGPT.n_layer
    for key, values in stds.items():
        want = proj_std if key == "c_proj" else 0.02
        assert values and all(abs(v - want) / want < 0.05 for v in values), (key, values, want)
    assert abs(nanogpt_model.wte.weight.std().item() - 0.02) < 0.001
    assert abs(nanogpt_model.wpe.weight.std().item() - 0.02) < 0.001


def test_biases_are_zero_when_enabled():
    model = GPT(tiny(bias="gpt2"))
    biases = [(n, p) for n, p in model.named_parameters() if n.endswith("bias")]
    assert len(biases) == 2 * 6 + 1  # per block: ln_1, c_attn, c_proj, ln_2, c_fc, c_proj; plus ln_f
    for name, p in biases:
        assert torch.count_nonzero(p) == 0, name


def test_bias_patterns_put_biases_where_they_say():
    def biased(bias) -> set[str]:
        model = GPT(tiny(n_layer=1, tie_weights=False, bias=bias))
        return {n.removesuffix(".bias") for n, _ in model.named_parameters() if n.endswith(".bias")}

    layers = {"h.0.ln_1", "h.0.attn.c_proj", "h.0.ln_2", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "ln_f"}
    assert biased("none") == set()
    assert biased("gpt2") == layers | {"h.0.attn.c_attn"}  # GPT-2: every Linear and LayerNorm, not the head
    assert biased("lecture") == layers | {"lm_head"}  # the lecture: not key/query/value, but the head
    assert biased(True) == biased("gpt2") and biased(False) == set()  # the switch was a bool once
    assert GPTConfig(bias=True).bias == "gpt2"
    with pytest.raises(ValueError, match="bias must be one of none, gpt2, lecture"):
        GPTConfig(bias="all")


@pytest.mark.parametrize("field", sorted(ModelConfig.choices()))
def test_every_choice_builds_and_an_unknown_one_is_refused_when_the_config_is_made(field):
    """An unknown value once built something silently (relu^2 for an unknown mlp, no norm for an unknown norm)."""
    allowed = ModelConfig.choices()[field]
    assert len(allowed) >= 2
    shape = {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 4, "vocab_size": 5}
    for value in allowed:  # every declared value resolves to modules
        model = build_model(ModelConfig(**shape, **{field: value}))
        assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape == (1, 4, 5)
    typo = allowed[1] + "x"
    with pytest.raises(ValueError) as e:
        ModelConfig(**shape, **{field: typo})
    assert str(e.value) == (f"ModelConfig.{field} must be one of {', '.join(allowed)}, got {typo!r} "
                            f"(did you mean '{allowed[1]}'?)")
    assert field not in GPTConfig.choices() or GPTConfig.choices()[field] == allowed


def test_initial_loss_near_ln_vocab(shakespeare_dir):
    from scratchgpt.data import BatchLoader

    x, y = BatchLoader(shakespeare_dir, "train", 64, 8, seed=3).get_batch()
    torch.manual_seed(1)
    gpt = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=65)).eval()
    with torch.no_grad():
        _, gpt_loss = gpt(x, y)
    assert abs(gpt_loss.item() - math.log(65)) < 0.1
    bigram = BigramLanguageModel(65).eval()  # default init: a near-zero table, every next token equally likely
    with torch.no_grad():
        _, bigram_loss = bigram(x, y)
    assert abs(bigram_loss.item() - math.log(65)) < 0.05
    video = BigramLanguageModel(65, init_scheme="torch").eval()
    with torch.no_grad():
        _, video_loss = video(x, y)
    # the video's bigram table starts N(0, 1), not uniform: the expected excess over ln(65) is about
    # var / 2 = 0.5 (the lecture prints 4.87), so it starts near, but above, ln(65)
    assert math.log(65) + 0.2 < video_loss.item() < math.log(65) + 0.8


# ---- forward ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt", "bigram"])
def test_output_shapes(arch):
    from scratchgpt.config import ModelConfig

    model = build_model(ModelConfig(**{**tiny().__dict__, "arch": arch}))
    idx = torch.randint(11, (3, 7))
    logits, loss = model(idx)
    assert logits.shape == (3, 7, 11) and loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 7, 11) and loss.shape == () and torch.isfinite(loss)
    logits, _ = model(idx, last_only=True)
    assert logits.shape == (3, 1, 11)


def test_sequence_longer_than_block_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny(block_size=8))(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_future_tokens_do_not_change_past_logits(pos_emb):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb, n_layer=3)).eval()
    idx = torch.randint(11, (2, 12))
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 5, 11):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 11
            out, _ = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), t
            assert not torch.allclose(out[:, t], base[:, t])


# ---- the lecture's self-attention trick ---------------------------------------------------------------

@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_a_head_with_zero_affinities_averages_the_past(attention):
    """The lecture's self-attention trick: with every affinity q.k zero, the masked softmax gives equal weight
    to each past position, so a head of our attention returns the running mean of its values."""
    torch.manual_seed(1337)
    B, T, C = 4, 8, 2
    x = torch.randn(B, T, C)
    # version 1 of the lecture: a loop over the past
    running_mean = torch.stack([x[:, : t + 1].mean(1) for t in range(T)], dim=1)  # (B, T, C)
    attn = CausalSelfAttention(tiny(n_embd=C, n_head=1, attn_proj=False, attention=attention)).eval()
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        attn.c_attn.weight[2 * C:].copy_(torch.eye(C))  # q = k = 0 (every affinity 0), v = x
        got = attn(x)
    assert torch.allclose(got, running_mean, atol=1e-6)


def naive_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Each head by hand: q @ k^T * hs**-0.5, mask the future with -inf, softmax, @ v; concat; c_proj."""
    B, T, C = x.shape
    nh = attn.n_head
    hs = C // nh
    q, k, v = attn.c_attn(x).split(C, dim=2)
    tril = torch.tril(torch.ones(T, T))
    heads = []
    for h in range(nh):
        qh, kh, vh = (z[:, :, h * hs : (h + 1) * hs] for z in (q, k, v))  # (B, T, hs)
        wei = qh @ kh.transpose(-2, -1) * hs**-0.5  # (B, T, T)
        wei = wei.masked_fill(tril == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        heads.append(wei @ vh)  # (B, T, hs)
    return attn.c_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("n_head", [1, 2, 4, 8])
def test_attention_matches_naive_masked_softmax(n_head):
    torch.manual_seed(n_head)
    attn = CausalSelfAttention(tiny(n_embd=32, n_head=n_head, dropout=0.1, bias=True)).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)  # non-trivial weights and biases, so softmax is far from uniform
        x = torch.randn(3, 13, 32)
        got = attn(x)
        want = naive_attention(attn, x)
    assert got.shape == (3, 13, 32)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_manual_attention_equals_the_fused_kernel(pos_emb):
    """`model.attention = manual` writes softmax(Q K^T / sqrt(d)) V out; it computes what
    scaled_dot_product_attention computes: logits, loss and gradients, with a cache and with the engine's masks."""
    torch.manual_seed(0)
    fused = GPT(tiny(pos_emb=pos_emb, n_layer=3, n_head=4, n_embd=32, bias=True))
    manual = GPT(replace(fused.config, attention="manual"))
    manual.load_state_dict(fused.state_dict())
    idx = torch.randint(11, (3, 16))
    losses, grads = [], []
    for model in (fused, manual):
        logits, loss = model(idx, idx.roll(-1, 1))
        loss.backward()
        losses.append((logits, loss))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert torch.allclose(losses[0][0], losses[1][0], atol=1e-5, rtol=0)
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-6, rtol=0)
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=0) for n in grads[0])
    with torch.no_grad():
        for model in (fused, manual):
            model.eval()
        # a prefix through the cache, then a chunk (the explicit-mask path), then a masked lane-style step
        outs = []
        for model in (fused, manual):
            cache = TinyCache()
            a = model(idx[:, :10], cache=cache)[0]
            b = model(idx[:, 10:13], cache=cache)[0]
            mask = torch.ones(3, 1, 1, 14, dtype=torch.bool)
            mask[1, ..., 5:9] = False  # row 1 may not see keys 5..8
            c = model(idx[:, 13:14], cache=cache, attn_mask=mask)[0]
            outs.append(torch.cat((a, b, c), dim=1))
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=0)


def test_attention_with_kv_cache_token_by_token_equals_full():
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny(n_embd=32, n_head=4)).eval()
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        full = attn(x)
        cache = TinyCache()
        steps = [attn(x[:, t : t + 1], cache=cache, layer=0) for t in range(10)]
        # a chunk after a cached prefix takes the explicit-mask path
        cache2 = TinyCache()
        chunks = [attn(x[:, :4], cache=cache2, layer=0), attn(x[:, 4:7], cache=cache2, layer=0),
                  attn(x[:, 7:], cache=cache2, layer=0)]
    assert cache.pos == 10
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_with_kv_cache_token_by_token_equals_full(pos_emb):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb, n_layer=3)).eval()
    idx = torch.randint(11, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        cache = TinyCache()
        steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(16)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.5))
    idx = torch.randint(11, (2, 8))
    model.eval()
    with torch.no_grad():
        a, b = model(idx)[0], model(idx)[0]
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c = model(idx)[0]
    assert not np.allclose(a.numpy(), c.numpy())

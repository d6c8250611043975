"""The memory a model needs is estimated from its config, and one that cannot fit is refused before any
module is built: by `train`, `bench` and loading a run for sampling. One `error:` line, exit 2."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import untrained_run
from scratchgpt import memory
from scratchgpt.cli import main as cli_main
from scratchgpt.config import Config, ModelConfig, from_dict
from scratchgpt.models import GPT, BigramLanguageModel, build_model
from scratchgpt.optim import configure_optimizer


@settings(max_examples=40, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), head=st.sampled_from([2, 4]),
       block=st.integers(1, 16), vocab=st.integers(1, 50), bias=st.sampled_from(["none", "gpt2", "lecture"]),
       tie=st.booleans(), pos=st.sampled_from(["learned", "rope", "none"]),
       norm=st.sampled_from(["layernorm", "rmsnorm", "none"]), mlp=st.sampled_from(["gelu", "relu2", "none"]),
       mlp_proj=st.booleans(), attn_proj=st.booleans(), qk_norm=st.booleans(), arch=st.sampled_from(["gpt", "gpt", "bigram"]))
def test_count_params_is_exact(n_layer, n_head, head, block, vocab, bias, tie, pos, norm, mlp, mlp_proj, attn_proj,
                               qk_norm, arch):
    m = ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_head * head, block_size=block, vocab_size=vocab,
                    bias=bias, tie_weights=tie, pos_emb=pos, norm=norm, mlp=mlp, mlp_proj=mlp_proj, attn_proj=attn_proj,
                    qk_norm=qk_norm, arch=arch)
    model = build_model(m)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert memory.count_params(m) == sum(unique.values())


def test_training_estimate_counts_weights_grads_and_adamw_state():
    cfg = from_dict({"model": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 10},
                     "train": {"batch_size": 3}})
    est = memory.train_bytes(cfg)
    assert est.states == 16 * est.params
    assert est.activations >= 3 * 8 * 10 * 4  # at least the fp32 logits of one batch
    bigger = memory.train_bytes(from_dict({**memory_dict(cfg), "train": {"batch_size": 6}}))
    assert bigger.activations > est.activations and bigger.states == est.states



def test_muon_estimate_holds_one_momentum_for_exactly_the_matrices_muon_takes():
    cfg = from_dict({"model": {"n_layer": 3, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 10},
                     "train": {"optimizer": "muon"}})
    opt = configure_optimizer(build_model(cfg.model), cfg.train, torch.device("cpu"))
    taken = sum(p.numel() for g in opt.param_groups if g.get("muon") for p in g["params"])
    assert taken > 0
    est = memory.train_bytes(cfg)
    assert est.states == 16 * est.params - 4 * taken  # fp32 weights + grads, AdamW 2 moments, Muon 1


def memory_dict(cfg: Config) -> dict:
    return {"model": {"n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "n_embd": cfg.model.n_embd,
                      "block_size": cfg.model.block_size, "vocab_size": cfg.model.vocab_size}}


def test_ram_is_what_sysconf_says_or_less():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory.ram_bytes() <= total


@pytest.fixture
def no_building(monkeypatch):
    """Building any model with real weights is a test failure (and would allocate terabytes): the refusal must
    come first. Counting parameters builds one on the meta device, which allocates nothing."""
    meta_builds = []

    def guarded(cls):
        real = cls.__init__

        def init(self, *args, **kwargs):
            if torch.get_default_device().type != "meta":
                raise AssertionError("a model was built before the memory check")
            meta_builds.append(cls.__name__)
            real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)

    guarded(GPT)
    guarded(BigramLanguageModel)
    return meta_builds


def one_error_line(capsys) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.err, out.err
    return lines[0]


@pytest.mark.parametrize("command", ["train", "bench"])
def test_an_impossible_model_is_refused_before_it_is_built(command, small_text_dir, tmp_path, capsys, no_building):
    recipe = tmp_path / "huge.toml"
    recipe.write_text(f'[data]\ndir = "{small_text_dir}"\n[model]\nn_layer = 10000\nn_head = 64\nn_embd = 8192\n'
                      'block_size = 1024\n[train]\nmax_iters = 1\nbatch_size = 8\ndevice = "cpu"\n')
    argv = [command, str(recipe)] + (["--out", str(tmp_path / "run"), "--quiet"] if command == "train" else [])
    assert cli_main(argv) == 2
    line = one_error_line(capsys)
    assert "to train" in line and "8.1T parameters" in line and "this machine has" in line and "RAM" in line, line
    assert "TiB" in line and "model.n_layer" in line
    assert not (tmp_path / "run").exists()
    assert no_building and set(no_building) == {"GPT"}  # counted from the meta device


def test_the_machines_memory_decides(small_text_dir, tmp_path, monkeypatch, capsys):
    """A small model is refused on a machine said to have 1 MiB, and trains when it has the real amount."""
    recipe = tmp_path / "small.toml"
    recipe.write_text(f'[data]\ndir = "{small_text_dir}"\n[model]\nn_layer = 2\nn_head = 2\nn_embd = 64\n'
                      'block_size = 16\n[train]\nmax_iters = 1\nbatch_size = 4\neval_iters = 1\ndevice = "cpu"\n')
    monkeypatch.setattr(memory, "ram_bytes", lambda: 1 << 20)
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "this machine has 1.0 MiB of RAM" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_loading_a_run_too_big_for_the_machine_is_refused(tmp_path, monkeypatch, capsys, request):
    run, model_cfg = untrained_run(tmp_path / "run")
    need = memory.weights_bytes(model_cfg)
    monkeypatch.setattr(memory, "ram_bytes", lambda: need - 1)
    request.getfixturevalue("no_building")  # from here on a real build fails the test
    assert cli_main(["sample", str(run), "--max-new-tokens", "2"]) == 2
    line = one_error_line(capsys)
    assert f"need about {memory.fmt_bytes(need)} RAM to load" in line


@pytest.mark.gpu
def test_cuda_device_memory_is_what_torch_reports():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    have, who = memory.machine_bytes(torch.device("cuda"))
    assert have == torch.cuda.get_device_properties(0).total_memory and who.endswith("has")

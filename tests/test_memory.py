"""The memory a model needs is estimated from its config, and one that cannot fit is refused before any
module is built: by `train`, `bench` and loading a run for sampling. One `error:` line, exit 2."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt import checkpoint as ckpt
from scratchgpt import memory
from scratchgpt.cli import main as cli_main
from scratchgpt.config import Config, ModelConfig, from_dict
from scratchgpt.models import GPT, BigramLanguageModel, build_model
from scratchgpt.tokenizers import CharTokenizer


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


def memory_dict(cfg: Config) -> dict:
    return {"model": {"n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "n_embd": cfg.model.n_embd,
                      "block_size": cfg.model.block_size, "vocab_size": cfg.model.vocab_size}}


def test_ram_is_what_sysconf_says_or_less():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory.ram_bytes() <= total


@pytest.fixture
def no_building(monkeypatch):
    """Building any model is a test failure (and would allocate terabytes): the refusal must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was built before the memory check")

    monkeypatch.setattr(GPT, "__init__", boom)
    monkeypatch.setattr(BigramLanguageModel, "__init__", boom)


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


def test_loading_a_run_too_big_for_the_machine_is_refused(tmp_path, monkeypatch, capsys):
    cfg = Config(name="r", model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=4))
    run = tmp_path / "run"
    run.mkdir()
    model = build_model(cfg.model)
    ckpt.write_run_header(run, cfg, CharTokenizer("\nabc"), model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=0)
    need = memory.weights_bytes(cfg.model)
    monkeypatch.setattr(memory, "ram_bytes", lambda: need - 1)
    built, init = [], GPT.__init__

    def counted(self, *a, **k):  # the shape check builds one on the meta device, which allocates nothing
        if torch.get_default_device().type != "meta":
            built.append(1)
        init(self, *a, **k)
    monkeypatch.setattr(GPT, "__init__", counted)
    assert cli_main(["sample", str(run), "--max-new-tokens", "2"]) == 2
    line = one_error_line(capsys)
    assert f"need about {memory.fmt_bytes(need)} RAM to load" in line and not built


@pytest.mark.gpu
def test_cuda_device_memory_is_what_torch_reports():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    have, who = memory.machine_bytes(torch.device("cuda"))
    assert have == torch.cuda.get_device_properties(0).total_memory and who.endswith("has")

"""Shared fixtures: the real corpus (through $SCRATCHGPT_TINYSHAKESPEARE), small prepared data, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scratchgpt.config import from_dict
from scratchgpt.data import SHAKESPEARE_ENV, prepare_shakespeare_char, prepare_text

REPO = Path(__file__).resolve().parents[1]

# Modules whose tests load, train or serve with dtype "auto", so their numbers follow the precision policy's
# branch for this CPU: scripts/test.sh runs them a second time with SCRATCHGPT_NATIVE_BF16 forced the other way
# (`-m precision`), so both branches pass on any machine.
PRECISION_MODULES = {"test_api", "test_sample", "test_serve", "test_serve_browser", "test_chat", "test_eval",
                     "test_same_numbers", "test_quantize", "test_runtime", "test_lm_eval", "test_completion",
                     "test_lecture", "test_chat_demo"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in PRECISION_MODULES:
            item.add_marker(pytest.mark.precision)

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two busy-waiting
# OpenMP threads per process make them ten times slower; subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = os.environ.get(SHAKESPEARE_ENV) or str(REPO.parent / "shared/data/tinyshakespeare/input.txt")
    if not Path(path).is_file():
        pytest.skip(f"tiny Shakespeare not found; set {SHAKESPEARE_ENV}")
    return Path(path)


@pytest.fixture(scope="session")
def shakespeare_dir(shakespeare_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shakespeare_char")
    prepare_shakespeare_char(shakespeare_path, out)
    return out


@pytest.fixture(scope="session")
def small_text_dir(tmp_path_factory) -> Path:
    """A small prepared corpus that needs no shared file: fast tests run anywhere."""
    d = tmp_path_factory.mktemp("small")
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))
    (d / "input.txt").write_text(text, encoding="utf-8")
    prepare_text(d / "input.txt", d / "data")
    return d / "data"


def tiny_config(data_dir, **train):
    """A model small enough that a few dozen steps run in well under a second."""
    t = {"max_iters": 20, "batch_size": 4, "eval_interval": 10, "eval_iters": 2, "log_interval": 1,
         "warmup_iters": 2, "device": "cpu", "dtype": "float32"}
    t.update(train)
    return from_dict({"data": {"dir": str(data_dir)},
                      "model": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.1},
                      "train": t}, name="tiny")


def untrained_run(run_dir: Path):
    """A run directory holding an untrained 1-layer GPT over "\nabc" (no training needed), and its model config."""
    from scratchgpt import checkpoint as ckpt
    from scratchgpt.config import Config, ModelConfig
    from scratchgpt.models import build_model
    from scratchgpt.tokenizers import CharTokenizer

    cfg = Config(name="r", model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=4))
    run_dir.mkdir(parents=True)
    model = build_model(cfg.model)
    ckpt.write_run_header(run_dir, cfg, CharTokenizer("\nabc"), model.num_params())
    for name in (ckpt.MODEL, ckpt.MODEL_BEST):
        ckpt.save_weights(run_dir / name, model, step=0)
    return run_dir, cfg.model

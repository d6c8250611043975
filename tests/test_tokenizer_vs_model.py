"""A tokenizer may be smaller than the model's vocabulary (padding), never larger: where the data meets a
recipe (`resolved_model_config`) and where a run is loaded (`load_model`), through the public entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main as cli_main
from scratchgpt.config import Config, ModelConfig
from scratchgpt.errors import CheckpointError
from scratchgpt.fileio import atomic_write_json
from scratchgpt.models import build_model
from scratchgpt.tokenizers import CharTokenizer


def write_run(run: Path, model_vocab: int, chars: str) -> Path:
    """A run directory (no training needed): config, tokenizer and random weights."""
    cfg = Config(name="v", model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=model_vocab))
    model = build_model(cfg.model)
    run.mkdir(parents=True)
    ckpt.write_run_header(run, cfg, CharTokenizer(chars), model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=0)
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_smaller_tokenizer_is_padding(tmp_path):
    run = write_run(tmp_path / "run", model_vocab=16, chars="\nabc")
    model, tok, cfg = ckpt.load_model(run)
    assert tok.vocab_size == 4 and cfg.model.vocab_size == 16


def test_larger_tokenizer_is_refused_on_load(tmp_path, capsys):
    run = write_run(tmp_path / "run", model_vocab=4, chars="\nabc")
    atomic_write_json(run / ckpt.TOKENIZER, CharTokenizer("\nabcdefgh").to_json())  # swapped in by hand
    with pytest.raises(CheckpointError, match=r"has 9 tokens but the weights have a vocabulary of 4"):
        ckpt.load_model(run)
    assert cli_main(["sample", str(run), "--max-new-tokens", "3"]) == 2
    line = one_error_line(capsys)
    assert "tokenizer.json" in line and "at most as many tokens as the model" in line
    assert capsys.readouterr().out == ""  # nothing generated, not even the prompt


def test_recipe_vocabulary_smaller_than_the_data_is_refused_before_a_run_exists(small_text_dir, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndir = "{small_text_dir}"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 8\n'
                      'block_size = 8\nvocab_size = 3\n[train]\nmax_iters = 1\ndevice = "cpu"\n')
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "'model.vocab_size' is 3" in line and "must be at least" in line
    assert not out.exists()

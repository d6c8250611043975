"""Recipes by name from any directory (`scratchgpt recipes`, `recipes show`, `train NAME`), the run directory
named after its data, `--version` and `python -m scratchgpt`, and `lecture --notebook DIR`. The wheel's copy
of the same files is tested by tests/test_package.py."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import scratchgpt
from scratchgpt import recipes, resources
from scratchgpt.cli import main
from scratchgpt.config import Config, DataConfig, default_run_dir, load_recipe
from scratchgpt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ON_DISK = sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.toml"))
TINY = ["--train.max_iters=2", "--train.eval_interval=2", "--train.eval_iters=1", "--train.batch_size=2",
        "--train.device=cpu", "--train.dtype=float32", "--train.time_limit=0", "--train.schedule_by_time=false",
        "--train.full_val=false", "--model.n_layer=1", "--model.n_head=1", "--model.n_embd=8", "--model.block_size=8"]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty working directory outside the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_names_are_the_repositorys_configs_read_in_place():
    assert resources.root() == REPO  # an editable install has no bundle: configs/ is the one copy
    assert sorted(recipes.names()) == ON_DISK
    assert {"shakespeare_char_cpu", "lecture/1_bigram", "chat/demo_sft"} <= set(ON_DISK)


@pytest.mark.parametrize("name", ON_DISK)
def test_every_recipe_loads_by_name_from_any_directory(name, elsewhere):
    cfg = load_recipe(name)
    assert cfg == load_recipe(REPO / "configs" / f"{name}.toml")
    assert cfg.name == Path(name).name
    # as a clone's docs spell it, from a directory that has no configs/
    assert load_recipe(f"configs/{name}.toml") == cfg


def test_a_toml_file_wins_over_the_name(elsewhere):
    mine = elsewhere / "configs" / "bigram.toml"
    mine.parent.mkdir()
    mine.write_text(recipes.text("bigram").replace("max_iters = 3000", "max_iters = 7"), encoding="utf-8")
    assert load_recipe("configs/bigram.toml").train.max_iters == 7
    assert load_recipe("bigram").train.max_iters == 3000  # a bare name is the package's


def test_an_unknown_name_is_one_sentence_naming_the_closest(elsewhere, capsys):
    with pytest.raises(ConfigError, match=r"recipe 'shakespeare_cpu' not found.*did you mean 'shakespeare_char_cpu'"):
        load_recipe("shakespeare_cpu")
    with pytest.raises(ConfigError, match=r"did you mean 'lecture/1_bigram'"):
        load_recipe("lecture/1_bigrm")
    assert main(["train", "chat/demo_stf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'chat/demo_sft'" in err[0]
    assert main(["recipes", "show", "zzz"]) == 2
    err = capsys.readouterr().err
    assert "(the closest is '" in err and "`scratchgpt recipes` lists them" in err


def test_recipes_lists_each_one_on_one_line_with_what_where_and_how_long(elsewhere, capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == recipes.names() and len(lines) == len(ON_DISK)
    for name, line in zip(recipes.names(), lines, strict=True):
        s = recipes.summary(name)
        assert s.about and s.cpu and s.gpu, name  # every recipe says what it trains and where it was timed
        assert f"on {s.data} " in line and f"2-core CPU: {s.cpu} " in line and line.endswith(f"one GPU: {s.gpu}")
    by_name = dict(zip(recipes.names(), lines, strict=True))
    assert "9 s to val 2.49" in by_name["bigram"]  # docs/benchmarks.md's figure
    assert "on data/chat_demo " in by_name["chat/demo_sft"]
    assert "one GPU: not measured" in by_name["gpt2_124m"]


def test_recipes_show_prints_the_toml_to_copy_and_edit(elsewhere, capsys):
    assert main(["recipes", "show", "lecture/1_bigram"]) == 0
    shown = capsys.readouterr().out
    assert shown == (REPO / "configs/lecture/1_bigram.toml").read_text(encoding="utf-8")
    (elsewhere / "mine.toml").write_text(shown, encoding="utf-8")
    copy = load_recipe("mine.toml")
    assert dataclasses.replace(copy, name="1_bigram") == load_recipe("lecture/1_bigram")
    assert tomllib.loads(shown)["model"]["arch"] == "bigram"


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("shakespeare_char_cpu", "data/shakespeare_char", "runs/shakespeare_char_cpu"),  # says what it trains on
    ("shakespeare_char_cpu", "data/python", "runs/python_shakespeare_char_cpu"),
    ("bigram", "data/shakespeare_char", "runs/shakespeare_char_bigram"),
    ("demo_sft", "/abs/path/chat_demo/", "runs/chat_demo_demo_sft"),
])
def test_the_default_run_directory_names_the_data(name, data, expected):
    assert default_run_dir(Config(name=name, data=DataConfig(dir=data))) == Path(expected)


def test_train_by_name_on_other_data_names_the_run_after_the_data(small_text_dir, elsewhere, capsys):
    shutil.copytree(small_text_dir, elsewhere / "data" / "python")
    assert main(["train", "shakespeare_char_cpu", "--data.dir=data/python", "--quiet", *TINY]) == 0
    assert "run directory runs/python_shakespeare_char_cpu" in capsys.readouterr().err
    assert (elsewhere / "runs/python_shakespeare_char_cpu/config.json").is_file()
    assert main(["train", "shakespeare_char_cpu", "--data.dir=data/python", "--quiet", "--out", "mine", *TINY]) == 0
    assert (elsewhere / "mine/config.json").is_file()
    assert sorted(p.name for p in (elsewhere / "runs").iterdir()) == ["python_shakespeare_char_cpu"]


def test_version_and_python_dash_m(elsewhere, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"scratchgpt {scratchgpt.__version__}"
    out = subprocess.run([sys.executable, "-m", "scratchgpt", "recipes", "show", "bigram"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == recipes.text("bigram")
    bad = subprocess.run([sys.executable, "-m", "scratchgpt", "train", "nope"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: recipe 'nope' not found")


def test_lecture_notebook_is_written_out_and_never_overwrites(elsewhere, capsys):
    notebook = (REPO / "docs/lecture/lecture.ipynb").read_bytes()
    assert main(["lecture", "--notebook", "nb"]) == 0
    assert (elsewhere / "nb/lecture.ipynb").read_bytes() == notebook
    assert main(["lecture", "--notebook", "nb"]) == 0  # the same notebook again: nothing to do
    (elsewhere / "nb/lecture.ipynb").write_text("my notes", encoding="utf-8")
    capsys.readouterr()
    assert main(["lecture", "--notebook", "nb"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (elsewhere / "nb/lecture.ipynb").read_text(encoding="utf-8") == "my notes"
    assert not (elsewhere / "runs").exists()  # --notebook trains nothing

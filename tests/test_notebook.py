"""docs/lecture/lecture.ipynb: it runs top to bottom in a kernel (nbclient, CPU) and prints what the lecture
prints, and the committed copy is the one scripts/build_lecture_notebook.py builds, run in full, outputs kept."""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("build_lecture_notebook", REPO / "scripts" / "build_lecture_notebook.py")
BUILD = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(BUILD)


def outputs_by_tag(nb: nbformat.NotebookNode) -> dict[str, str]:
    return {c.metadata["tags"][0]: BUILD.outputs_text(c) for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("tags")}


def val_losses(printed: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)$", printed, re.M)]


@pytest.fixture(scope="module")
def ran(shakespeare_path, tmp_path_factory) -> dict[str, str]:
    """The notebook run with its training loops shortened (the variable the notebook reads), in a scratch
    directory so nothing lands in the repository."""
    env = {"SCRATCHGPT_TINYSHAKESPEARE": str(shakespeare_path), BUILD.QUICK_ENV: "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    nb = BUILD.execute(BUILD.build(), cwd=tmp_path_factory.mktemp("notebook"), env=env)  # a failing cell raises
    return outputs_by_tag(nb)


@pytest.mark.slow  # a kernel runs the whole notebook
def test_data_vocabulary_encoding_and_split_are_the_lectures(ran):
    chars, size = ran["vocab"].splitlines()
    assert size == "65" and len(ast.literal_eval(chars)) == 65  # the repr the notebook printed
    assert ran["encode"].splitlines() == ["[46, 47, 1, 58, 46, 43, 56, 43]", "hi there"]
    assert ran["split"].strip() == "train 1,003,854 tokens, val 111,540 tokens"


@pytest.mark.slow  # a kernel runs the whole notebook
def test_get_batch_prints_the_lectures_examples(ran):
    lines = [ln for ln in ran["batch"].splitlines() if ln.startswith("when input is")]
    assert len(lines) == 4 * 8  # batch 4, block 8
    # the lecture's own first batch (seed 1337): the same rows in the same order
    assert lines[0] == "when input is [24] the target: 43"
    assert lines[7] == "when input is [24, 43, 58, 5, 57, 1, 46, 43] the target: 39"
    assert lines[-1] == "when input is [25, 17, 27, 10, 0, 21, 1, 54] the target: 39"


@pytest.mark.slow  # a kernel runs the whole notebook
def test_untrained_bigram_scores_a_uniform_guess_and_training_lowers_the_loss(ran):
    loss = float(re.search(r"loss of the untrained bigram: ([\d.]+)", ran["untrained"]).group(1))
    assert abs(loss - math.log(65)) < 0.1
    video = float(re.search(r"with the video's N\(0, 1\) table: ([\d.]+)", ran["untrained"]).group(1))
    assert abs(video - 4.8786) < 0.01  # what the lecture prints for its N(0, 1) table, same seed
    for tag in ("bigram", "gpt"):
        losses = val_losses(ran[tag])
        assert len(losses) >= 2 and losses[-1] < losses[0], (tag, losses)


@pytest.mark.slow  # a kernel runs the whole notebook
def test_four_ways_to_average_the_past_agree(ran):
    lines = ran["averages"].splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["loop == matmul", "loop == softmax", "loop == a head"]
    assert all(ln.split()[-1] == "True" for ln in lines)


@pytest.mark.slow  # a kernel runs the whole notebook
def test_the_lectures_final_model_counts_what_the_lecture_prints(ran):
    assert ran["full_size"].strip() == "10.788929 M parameters"


def test_committed_notebook_is_the_built_one_run_in_full():
    committed = nbformat.read(str(BUILD.NOTEBOOK), as_version=4)
    built = BUILD.build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        "docs/lecture/lecture.ipynb is out of date: run python scripts/build_lecture_notebook.py"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.outputs and c.execution_count for c in code)  # outputs kept, so the page reads
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    out = outputs_by_tag(committed)
    assert val_losses(out["bigram"])[-1] < 2.6  # the full run: the bigram trained to about 2.5
    assert val_losses(out["gpt"])[-1] < val_losses(out["bigram"])[-1]  # and the GPT below it


def test_without_a_corpus_the_notebook_says_what_a_notebook_reader_can_do(tmp_path, monkeypatch):
    """The data cell, with no corpus anywhere and no network: the sentence names the variable to set in a cell
    (not a command-line flag), and doing what it says makes the cell work."""
    import urllib.error

    from scratchgpt import data

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    monkeypatch.delenv(data.SHAKESPEARE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    cell = next(src for kind, _, src in BUILD.CELLS if "def find_tiny_shakespeare" in src)
    scope = {"os": os, "Path": Path, "SHAKESPEARE_ENV": data.SHAKESPEARE_ENV,
             "fetch_shakespeare": data.fetch_shakespeare, "read_utf8": data.read_utf8}
    with pytest.raises(data.DataError) as e:
        exec(cell, dict(scope))
    message = str(e.value)
    assert f'set os.environ["{data.SHAKESPEARE_ENV}"] = "/path/to/input.txt" in a cell above' in message
    assert "--input" not in message and "input.txt beside this notebook" in message
    (tmp_path / "corpus.txt").write_text("First Citizen:\n", encoding="utf-8")
    monkeypatch.setenv(data.SHAKESPEARE_ENV, str(tmp_path / "corpus.txt"))  # what the sentence says
    done = dict(scope)
    exec(cell, done)
    assert done["text"] == "First Citizen:\n"

"""Progress for humans: a bar on a terminal, and in a log (stderr redirected to a file) one plain line per
reported interval instead of thousands of redraws; nothing on ranks other than 0."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from scratchgpt.console import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_tqdms_bar_a_log_gets_lines_and_other_ranks_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(10, desc="x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, desc="x"), LineProgress)
    off = progress_bar(10, desc="x", enabled=False)
    assert isinstance(off, tqdm) and off.disable
    monkeypatch.setenv("RANK", "1")
    quiet = progress_bar(10, desc="x")
    assert isinstance(quiet, tqdm) and quiet.disable


def test_lines_come_when_the_caller_reports_or_the_interval_passes_and_once_more_at_the_end():
    out = io.StringIO()
    bar = LineProgress(7, "train", "step", 0, False, every=3600.0, file=out)
    for step in range(1, 8):
        if step % 3 == 0:
            bar.set_postfix({"loss": f"{1 / step:.2f}"}, refresh=False)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [re.search(r" (\d+)/7 ", line).group(1) for line in lines] == ["3", "6", "7"]  # 7: the close
    assert lines[0].startswith("train:  43% 3/7 [") and lines[0].endswith(", loss=0.33]")
    assert "\r" not in out.getvalue()
    silent = io.StringIO()
    short = LineProgress(None, "tokenizing", "tok", 0, True, every=3600.0, file=silent)
    short.update(500)
    short.close()  # nothing reported and the interval never passed: a short job leaves the log alone
    assert silent.getvalue() == ""
    timed = io.StringIO()
    every = LineProgress(None, "tokenizing", "tok", 0, True, every=0.0, file=timed)
    every.update(12_345)
    assert re.fullmatch(r"tokenizing: 12\.3ktok \[00:00, .*tok/s\]\n", timed.getvalue())


@pytest.mark.slow
def test_a_training_logged_to_a_file_writes_one_progress_line_per_log_interval(small_text_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndir = "{small_text_dir}"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\n'
                      'block_size = 16\n[train]\nmax_iters = 40\nbatch_size = 4\nlog_interval = 10\n'
                      'eval_interval = 20\neval_iters = 1\ndevice = "cpu"\ndtype = "float32"\n', encoding="utf-8")
    log = tmp_path / "log"
    with log.open("w") as f:  # `scratchgpt train ... > log 2>&1`
        proc = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "train", str(recipe), "--out",
                               str(tmp_path / "run")], stdout=f, stderr=subprocess.STDOUT, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text  # no redraws, no terminal codes
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("train: ")]
    assert [int(re.search(r" (\d+)/40 ", line).group(1)) for line in progress] == [10, 20, 30, 40]
    assert all("loss=" in line for line in progress)
    others = [line for line in lines if line not in progress]
    assert [line.split(":")[0].split(" ")[0] for line in others] == ["model", "step", "step", "done"], text

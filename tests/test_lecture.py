"""`scratchgpt lecture`: every step trained in order, results.md and progression.png written, and resumable
(a finished step is never trained again; an interrupted one continues exactly)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import pytest
import torch

import scratchgpt.lecture as lecture_mod
from scratchgpt.cli import main
from scratchgpt.config import to_dict
from scratchgpt.errors import UserError
from scratchgpt.lecture import (
    MARKER,
    STEPS,
    default_docs_dir,
    identity_of,
    results_markdown,
    run_lecture,
    same_run,
    step_config,
)

NAMES = [s.name for s in STEPS]


def table_rows(path) -> dict[str, list[str]]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] in NAMES:
            rows[cells[0]] = cells
    return rows


def counting_train(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = lecture_mod.train

    def spy(cfg, *args, **kwargs):
        calls.append(cfg.name)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(lecture_mod, "train", spy)
    return calls


def test_lecture_trains_every_step_writes_results_and_never_retrains(small_text_dir, tmp_path, monkeypatch, capsys):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["--budget", "tiny", "--data", str(small_text_dir), "--runs", str(runs), "--docs", str(docs), "--quiet"]
    calls = counting_train(monkeypatch)
    assert main(["lecture", *args]) == 0
    assert "trained 7 of 7 steps" in capsys.readouterr().err
    assert calls == NAMES  # in the lecture's order

    rows = table_rows(docs / "results.md")
    assert list(rows) == NAMES
    for name, cells in rows.items():
        assert len(cells) == 9  # step, parameters, iters, train, val, lecture, time, CPU time, sample
        assert cells[2] == "4" and float(cells[4]) > 0
        marker = json.loads((runs / "tiny" / name / MARKER).read_text())
        assert len(marker["sample"]) == 200  # characters, one per token at char level
        assert f"{marker['val_loss']:.4f}" == cells[4]
    assert rows["1_bigram"][1] == "1,600" and rows["1_bigram"][5] == "~2.5"  # 40 x 40 table; the lecture's value
    assert rows["7_scaled_up"][5] == "~1.48"
    assert (docs / "progression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Run again: nothing is trained, the same numbers and samples are written.
    calls.clear()
    report = run_lecture("tiny", data_dir=small_text_dir, runs_dir=runs, docs_dir=docs, progress=False)
    assert calls == [] and report.trained == [] and report.skipped == NAMES
    assert table_rows(docs / "results.md") == rows

    # A step whose run is gone is trained again, alone, and deterministically gives the same result.
    before = json.loads((runs / "tiny" / "3_multi_head" / MARKER).read_text())
    shutil.rmtree(runs / "tiny" / "3_multi_head")
    report = run_lecture("tiny", data_dir=small_text_dir, runs_dir=runs, docs_dir=docs, progress=False)
    assert calls == ["3_multi_head"] and report.trained == ["3_multi_head"]
    after = json.loads((runs / "tiny" / "3_multi_head" / MARKER).read_text())
    assert (after["val_loss"], after["sample"]) == (before["val_loss"], before["sample"])


def test_interrupted_step_resumes_exactly(small_text_dir, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    step = STEPS[1]
    cfg = step_config(step, "tiny", "cpu", small_text_dir)
    straight = lecture_mod.train(cfg, out_dir=tmp_path / "straight", progress=False)
    # stopped by a time limit after its first step, as a Ctrl-C or a crash would leave it
    cut = lecture_mod.train(replace(cfg, train=replace(cfg.train, time_limit=1e-9)), out_dir=runs / "tiny" / step.name,
                          progress=False)
    assert cut.step < cfg.train.max_iters
    calls = counting_train(monkeypatch)
    report = run_lecture("tiny", data_dir=small_text_dir, runs_dir=runs, docs_dir=tmp_path / "docs", progress=False)
    assert calls == NAMES and report.trained == NAMES
    resumed = report.results[1]
    assert resumed["resumed"] is True and resumed["iters"] == cfg.train.max_iters
    assert resumed["val_loss"] == pytest.approx(straight.last_eval["val"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(straight.last_eval["train"], abs=1e-6)


def test_lecture_without_data_is_one_sentence(tmp_path, capsys):
    code = main(["lecture", "--data", str(tmp_path / "missing"), "--runs", str(tmp_path / "runs"),
                 "--docs", str(tmp_path / "docs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "scratchgpt prepare" in err and "Traceback" not in err
    assert not (tmp_path / "docs").exists()
    with pytest.raises(UserError, match="budget must be one of cpu, gpu"):
        run_lecture("tpu", data_dir=tmp_path / "missing")


def test_gpu_budget_is_the_lectures_sizes_written_beside_the_cpu_results(small_text_dir, tmp_path, monkeypatch,
                                                                          capsys):
    full = step_config(STEPS[-1], "gpu", "cpu", small_text_dir)
    m, t = full.model, full.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.bias) == (6, 6, 384, 256, 0.2, "lecture")
    assert (t.batch_size, t.max_iters, t.learning_rate) == (64, 5000, 3e-4)
    assert str(default_docs_dir("gpu")) == "docs/lecture/gpu" and str(default_docs_dir("cpu")) == "docs/lecture"
    # without a GPU, `auto` does not quietly start hours of CPU training
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    calls = counting_train(monkeypatch)
    code = main(["lecture", "--budget", "gpu", "--data", str(small_text_dir), "--runs", str(tmp_path / "runs"),
                 "--docs", str(tmp_path / "docs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "no GPU was found" in err and "--budget cpu" in err
    assert "Traceback" not in err and calls == [] and not (tmp_path / "docs").exists()


def test_samples_are_one_table_cell():
    row = {"step": "1_bigram", "params": 4225, "iters": 3000, "train_loss": 2.45, "val_loss": 2.49, "seconds": 12.0,
           "cpu_seconds": 11.0, "sample": "KING:\nO | <you>\n&'t", "machine": "m", "date": "d"}
    text = results_markdown([row], "cpu")
    line = next(ln for ln in text.splitlines() if ln.startswith("| 1_bigram"))
    assert "KING:<br>O &#124; &lt;you&gt;<br>&amp;'t" in line
    assert len(re.findall(r"(?<!\\) \| ", line)) == 8  # nine cells
    assert "`7_scaled_up`: `model.n_embd=192`" not in text  # only the steps present are listed


def test_a_setting_added_later_at_its_default_keeps_finished_steps_finished(small_text_dir):
    new = identity_of(to_dict(step_config(STEPS[1], "tiny", "cpu", small_text_dir)))
    assert same_run(new, new)
    older = json.loads(json.dumps(new))
    del older["model"]["qk_norm"], older["train"]["grad_clip"]  # as written before these settings existed
    assert new["model"]["qk_norm"] is False and new["train"]["grad_clip"] == 0.0  # recipe: not the default 1.0
    assert not same_run(older, new)  # grad_clip is not at its default: the old run computed something else
    del new["train"]["grad_clip"]
    assert same_run(older, new)  # qk_norm is at its default: the same run
    assert not same_run(older, {**new, "model": {**new["model"], "qk_norm": True}})
    assert not same_run({**older, "model": {**older["model"], "n_embd": 64}}, new)
    assert not same_run(None, new)


def test_a_run_recorded_when_bias_was_a_bool_compares_in_the_new_form(small_text_dir):
    bigram = identity_of(to_dict(step_config(STEPS[0], "tiny", "cpu", small_text_dir)))
    head = identity_of(to_dict(step_config(STEPS[1], "tiny", "cpu", small_text_dir)))
    assert (bigram["model"]["bias"], head["model"]["bias"]) == ("none", "lecture")
    older = json.loads(json.dumps(bigram).replace('"bias": "none"', '"bias": false'))
    assert older["model"]["bias"] is False and same_run(older, bigram)  # false was "none": still finished
    older = json.loads(json.dumps(head).replace('"bias": "lecture"', '"bias": false'))
    assert not same_run(older, head)  # a step trained without the lecture's biases is trained again

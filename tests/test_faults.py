"""The fault suite: SIGKILL at every file-system step of training (a new run, and one replacing another with
--force) and of export, and a full disk during training. Whatever the moment, nothing written before is
lost: the run directory is always no run yet, the old run whole, or the new run with a whole checkpoint; the
same command (or `--resume`) then finishes the run on exactly the weights an uninterrupted run reaches.

The kills use the zygote of kill_util.py: trial k is SIGKILLed just before the k-th rename, link, exchange or
removal of the command (the steps another process can see; a kill anywhere between two of them leaves what a
kill just before the next one leaves, plus at most a temp file or a cut metrics line, which the damaged-file
tests cover).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kill_util import FS_GATES, Zygote, leftovers, snapshot
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main as cli_main
from scratchgpt.train.ownership import holds_run
from scratchgpt.train.writer import RunWriter
from test_disks import fill, mounted

MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.1}
TRAIN = {"max_iters": 4, "batch_size": 4, "eval_interval": 2, "eval_iters": 1, "log_interval": 1,
         "warmup_iters": 2, "lr_decay_iters": 8, "device": "cpu", "dtype": "float32"}
TRAIN_GATES = ["os.replace", "os.rename", "os.link", "shutil.rmtree"]  # every step another process can see
PRELOAD = ("torch", "scratchgpt.train", "matplotlib.pyplot")  # what `train` imports, imported once


@pytest.fixture(scope="module")
def refs(small_text_dir, tmp_path_factory) -> dict[str, Path]:
    """The recipe; the uninterrupted run (4 and 8 steps); an older run of another seed with the user's notes."""
    tmp = tmp_path_factory.mktemp("faults")
    lines = [f'[data]\ndir = "{small_text_dir}"', "[model]", *(f"{k} = {json.dumps(v)}" for k, v in MODEL.items()),
             "[train]", *(f"{k} = {json.dumps(v)}" for k, v in TRAIN.items())]
    recipe = tmp / "tiny.toml"
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {"recipe": recipe, "straight": tmp / "straight", "straight8": tmp / "straight8", "old": tmp / "old"}
    assert cli_main(["train", str(recipe), "--out", str(out["straight"]), "--quiet"]) == 0
    assert cli_main(["train", str(recipe), "--out", str(out["straight8"]), "--quiet", "--train.max_iters=8"]) == 0
    assert cli_main(["train", str(recipe), "--out", str(out["old"]), "--quiet", "--train.seed=7"]) == 0
    (out["old"] / "notes.txt").write_text("the user's own notes\n")
    return out


def train_rows(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def no_temp_files(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.endswith(".tmp")] and leftovers(run.parent, run.name) == []


# ---- training ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["new", "replacing"])
def test_sigkill_at_any_step_of_training_loses_at_most_the_steps_since_the_last_checkpoint(refs, tmp_path, mode):
    work = tmp_path / "work"
    run = work / "run"
    argv = ["train", str(refs["recipe"]), "--out", str(run), "--quiet"] + (["--force"] if mode == "replacing" else [])
    old = snapshot(refs["old"])
    warmup = ["train", str(refs["recipe"]), "--out", str(tmp_path / "warmup"), "--quiet"]
    zygote = Zygote(argv, tmp_path, TRAIN_GATES, preload=PRELOAD, warmup=warmup)
    seen = []
    try:
        for kill_at in range(1, 200):
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            if mode == "replacing":
                shutil.copytree(refs["old"], run)
            killed_before = zygote.trial(kill_at)
            # the directory at the instant of the kill
            if mode == "replacing" and snapshot(run) == old:
                state = "old"
            elif not holds_run(run):
                state = "none"
                assert mode == "new", f"killed before {killed_before} (step {kill_at}): the old run is gone"
            else:
                state = "new"
                assert ckpt.read_config(run).train.seed == 1337 and ckpt.read_trainer_info(run)["step"] in (2, 4)
                assert ckpt.load_model(run)[0] is not None  # sampling works
                if mode == "replacing":
                    assert (run / "notes.txt").read_text() == "the user's own notes\n"
            seen.append(state)
            if killed_before is None:
                break
            # what a user does next: the same command again, or --resume once the run has a checkpoint
            again = argv if state != "new" else ["train", "--resume", str(run), "--quiet"]
            assert cli_main(again) == 0, f"killed before {killed_before} (step {kill_at}), state {state}"
            assert same_weights(run / ckpt.MODEL, refs["straight"] / ckpt.MODEL), f"step {kill_at}"
            assert train_rows(run) == train_rows(refs["straight"]), f"step {kill_at}"  # one run, each step once
            assert no_temp_files(run), f"step {kill_at}"
        else:
            pytest.fail("training never finished")
    finally:
        zygote.close()
    first = "old" if mode == "replacing" else "none"
    assert seen[0] == first and seen[-1] == "new" and first in seen[1:] and len(seen) > 8, seen
    assert same_weights(run / ckpt.MODEL, refs["straight"] / ckpt.MODEL)


# ---- export --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("over", [False, True], ids=["new", "over_an_old_export"])
def test_sigkill_at_any_step_of_export_leaves_no_output_or_a_whole_one(refs, tmp_path, over):
    ref_new, ref_old, out = tmp_path / "ref_new", tmp_path / "ref_old", tmp_path / "work" / "hf"
    assert cli_main(["export", str(refs["straight"]), "--out", str(ref_new)]) == 0
    assert cli_main(["export", str(refs["old"]), "--out", str(ref_old)]) == 0
    new, old = snapshot(ref_new), snapshot(ref_old)
    argv = ["export", str(refs["straight"]), "--out", str(out)] + (["--force"] if over else [])
    gates = [*FS_GATES, "pathlib.Path.write_text", "scratchgpt.interop.hf.save_file"]
    zygote = Zygote(argv, tmp_path, gates, preload=("torch", "scratchgpt.interop.hf"),
                    warmup=["export", str(refs["straight"]), "--out", str(tmp_path / "warmup")])
    seen = []
    try:
        for kill_at in range(1, 200):
            if out.parent.exists():
                shutil.rmtree(out.parent)
            out.parent.mkdir()
            if over:
                shutil.copytree(ref_old, out)
            killed = zygote.trial(kill_at) is not None
            now = snapshot(out) if out.exists() else None
            assert now in ((old if over else None), new), f"killed before step {kill_at}: a partial export"
            seen.append("new" if now == new else "before")
            # the same command again finishes it and cleans what the killed one left (--force: it may be done)
            assert cli_main([*argv, "--force"] if now == new and not over else argv) == 0
            assert snapshot(out) == new and leftovers(out.parent, "hf") == []
            if not killed:
                break
        else:
            pytest.fail("export never finished")
    finally:
        zygote.close()
    assert seen[0] == "before" and seen[-1] == "new" and len(seen) > 4, seen
    if over:
        return  # the same export as the other case, which loads it
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(out)  # the export every kill converges on loads
    assert model.config.n_layer == MODEL["n_layer"]


# ---- a full disk during training -----------------------------------------------------------------------

def no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("way", ["full", "enospc"])
def test_a_disk_that_fills_during_training_is_one_sentence_and_keeps_the_last_checkpoint(refs, tmp_path, monkeypatch,
                                                                                          capsys, way):
    """The disk fills up (a real tmpfs, or an injected ENOSPC) while a resumed run trains from step 4 to 8: the
    save at step 6 fails with one sentence, the step-4 checkpoint is untouched, and once there is room again
    the same --resume carries on to exactly the uninterrupted run."""
    base = tmp_path / "fs"
    if way == "enospc":
        base.mkdir()
    with mounted(base, "size=1m") if way == "full" else contextlib.nullcontext():
        run = base / "run"
        shutil.copytree(refs["straight"], run)  # a checkpoint at step 4
        kept = (ckpt.TOKENIZER, ckpt.MODEL, ckpt.MODEL_BEST, ckpt.STATE)
        before = {n: (run / n).read_bytes() for n in kept}
        real_save = RunWriter.save

        def filling_save(*a, **k):
            if way == "full":
                fill(base)
            else:
                monkeypatch.setattr(os, "fsync", no_space)  # every writer fsyncs before it commits
            return real_save(*a, **k)

        monkeypatch.setattr(RunWriter, "save", filling_save)
        resume = ["train", "--resume", str(run), "--quiet", "--train.max_iters=8"]
        assert cli_main(resume) == 2
        monkeypatch.undo()
        (base / "filler").unlink(missing_ok=True)
        out = capsys.readouterr()
        lines = [line for line in out.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in out.err, out.err
        assert lines[0].startswith(f"error: could not write '{run}") and os.strerror(errno.ENOSPC) in lines[0]
        assert "is unchanged" in lines[0] and "step 6: train loss" in out.err  # it failed in step 6's save
        assert {n: (run / n).read_bytes() for n in kept} == before  # the step-4 checkpoint, byte for byte
        assert ckpt.load_model(run)[0] is not None and no_temp_files(run)
        assert cli_main(resume) == 0  # room again: it carries on, exactly
        assert same_weights(run / ckpt.MODEL, refs["straight8"] / ckpt.MODEL)
        assert train_rows(run) == train_rows(refs["straight8"])

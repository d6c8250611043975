"""A run directory belongs to one run: a new run never writes into another without --force (and with it the
old run stays whole until the new run's first checkpoint), `--resume` never rewrites a run's tokenizer or
model config, leftovers of killed writers are cleaned, and damaged optional files never stop a resume.
Everything through the CLI or `train`, in process, on a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main as cli_main
from scratchgpt.data import prepare_text
from scratchgpt.errors import Interrupted
from scratchgpt.train import loop

MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.1}
TRAIN = {"max_iters": 4, "batch_size": 4, "eval_interval": 2, "eval_iters": 2, "log_interval": 1,
         "warmup_iters": 2, "lr_decay_iters": 8, "device": "cpu", "dtype": "float32"}


def recipe(tmp: Path, data: Path, name: str = "tiny", **train) -> Path:
    lines = [f'[data]\ndir = "{data}"', "[model]", *(f"{k} = {json.dumps(v)}" for k, v in MODEL.items()), "[train]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in {**TRAIN, **train}.items()]
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def step_of(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def signal_after(monkeypatch, steps: int, signum: int = signal.SIGTERM) -> None:
    """This process sends itself signum after `steps` training steps (the loop then saves and stops)."""
    real, count = loop.train_step, [0]

    def step(*a, **k):
        count[0] += 1
        if count[0] == steps:
            os.kill(os.getpid(), signum)
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_step", step)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> dict[str, Path]:
    """Data prepared from other text: another char vocabulary (size too), and the same size with other chars."""
    d = tmp_path_factory.mktemp("other")
    base = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))
    (d / "bigger.txt").write_text(base + "XYZ!?\n" * 20, encoding="utf-8")
    swapped = base.replace("z", "Q")  # one character for another: as many tokens, other ones
    (d / "swapped.txt").write_text(swapped, encoding="utf-8")
    prepare_text(d / "bigger.txt", d / "bigger")
    prepare_text(d / "swapped.txt", d / "swapped")
    return {"bigger": d / "bigger", "swapped": d / "swapped"}


@pytest.fixture(scope="module")
def trained(small_text_dir, tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at 2 and 4); tests copy it."""
    tmp = tmp_path_factory.mktemp("owned")
    run = tmp / "run"
    assert cli_main(["train", str(recipe(tmp, small_text_dir)), "--out", str(run), "--quiet"]) == 0
    return run


# ---- a new run and an existing one ----------------------------------------------------------------------

def test_a_new_run_refuses_a_directory_that_holds_a_run(trained, small_text_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    assert cli_main(["train", str(recipe(tmp_path, small_text_dir, seed=7)), "--out", str(run), "--quiet"]) == 2
    line = one_error(capsys)
    assert f"'{run}' already holds a run" in line and "--resume" in line and "--force" in line
    assert snapshot(run) == before
    # --force together with --resume in place is a mistake, said as one
    assert cli_main(["train", "--resume", str(run), "--force", "--quiet"]) == 2
    assert "needs no --force" in one_error(capsys)


def test_force_keeps_the_old_run_until_the_new_runs_first_checkpoint(trained, small_text_dir, tmp_path, monkeypatch,
                                                                     capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("the user's own file\n")
    old = snapshot(run)
    new_recipe = recipe(tmp_path, small_text_dir, name="new", seed=7, max_iters=6, eval_interval=3)
    seen = []
    real_save = ckpt.save_weights

    def watching_save(path, *a, **k):  # every checkpoint write of the new run: the old run is still whole
        if not seen:
            assert snapshot(run) == old
            assert ckpt.load_model(run)[0] is not None and ckpt.read_trainer_info(run)["step"] == 4
            assert path.parent != run  # the new run writes beside it, in its staging directory
        seen.append(path)
        return real_save(path, *a, **k)

    monkeypatch.setattr(ckpt, "save_weights", watching_save)
    assert cli_main(["train", str(new_recipe), "--out", str(run), "--force", "--quiet"]) == 0
    capsys.readouterr()
    assert len(seen) >= 4  # best + last, twice
    assert json.loads((run / "config.json").read_text())["config"]["name"] == "new"
    assert ckpt.read_trainer_info(run)["step"] == 6 and step_of(run / ckpt.MODEL_BEST) in (3, 6)
    assert (run / "notes.txt").read_text() == "the user's own file\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []  # no staging left


def test_a_replacing_run_never_inherits_the_old_best(trained, small_text_dir, tmp_path, monkeypatch, capsys):
    """Stopped by a signal before any evaluation, the new run has no best weights: the old run's must not
    pass for them."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert (run / ckpt.MODEL_BEST).is_file()
    signal_after(monkeypatch, 1)
    assert cli_main(["train", str(recipe(tmp_path, small_text_dir, name="new", seed=7)), "--out", str(run),
                     "--force", "--quiet"]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 1" in one_error(capsys)
    assert not (run / ckpt.MODEL_BEST).exists()
    assert {r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())} == {1}
    assert ckpt.read_config(run).name == "new" and ckpt.weights_path(run) == run / ckpt.MODEL


def test_a_replacing_run_that_fails_before_its_first_checkpoint_leaves_the_old_run(trained, small_text_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    old = snapshot(run)

    def disk_full(*a, **k):
        raise OSError(28, os.strerror(28), str(run / ckpt.MODEL))

    monkeypatch.setattr(ckpt, "save_weights", disk_full)
    assert cli_main(["train", str(recipe(tmp_path, small_text_dir, seed=7)), "--out", str(run), "--force",
                     "--quiet"]) == 2
    assert "No space left on device" in one_error(capsys)
    assert snapshot(run) == old and sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.toml"]


# ---- what a resume may change ---------------------------------------------------------------------------

REFUSED = {
    "mlp": (["--model.mlp=relu"], ['model.mlp is "gelu"', '"relu" was asked for']),  # same shapes, other function
    "n_layer": (["--model.n_layer=2"], ["model.n_layer is 1", "2 was asked for"]),
    "weight_decay": (["--train.weight_decay=0.5"], ["train.weight_decay is 0.1", "0.5 was asked for"]),
    "seed": (["--train.seed=1"], ["train.seed is 1337", "1 was asked for"]),
    "vocab_size": (["--data.dir={bigger}"], ["char tokenizer of 40 tokens", "one of 45"]),
    "vocabulary": (["--data.dir={swapped}"], ["char tokenizer of 40 tokens", "as many but other tokens"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_resume_refuses_what_changes_the_run_naming_key_and_values(case, trained, other_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    overrides, words = REFUSED[case]
    overrides = [o.format(**other_data) for o in overrides]
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=6", *overrides]) == 2
    line = one_error(capsys)
    assert all(w in line for w in words), line
    assert snapshot(run) == before


def test_resume_after_the_data_was_prepared_again_with_another_vocabulary(trained, other_data, tmp_path, capsys):
    """The issue's case: the same data directory, re-prepared; the run must not train on the new ids."""
    data = tmp_path / "data"
    shutil.copytree(json.loads((trained / "config.json").read_text())["config"]["data"]["dir"], data)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["data"]["dir"] = str(data)
    (run / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run)
    assert cli_main(["prepare", "text", "--input", str(other_data["bigger"].parent / "bigger.txt"),
                     "--out", str(data)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=6"]) == 2
    line = one_error(capsys)
    assert "keeps the run's tokenizer" in line and f"'{data}' holds one of 45" in line
    assert snapshot(run) == before


def test_resume_keeps_tokenizer_and_config_bytes_and_records_allowed_changes(small_text_dir, tmp_path, monkeypatch,
                                                                              capsys):
    run = tmp_path / "run"
    rec = recipe(tmp_path, small_text_dir, max_iters=8)
    signal_after(monkeypatch, 3)
    assert cli_main(["train", str(rec), "--out", str(run), "--quiet"]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    header = {n: (run / n).read_bytes() for n in (ckpt.CONFIG, ckpt.TOKENIZER)}
    signal_after(monkeypatch, 2)
    assert cli_main(["train", "--resume", str(run), "--quiet"]) == 128 + signal.SIGTERM  # nothing asked: untouched
    monkeypatch.undo()
    assert {n: (run / n).read_bytes() for n in header} == header
    data = tmp_path / "same_data"
    shutil.copytree(small_text_dir, data)  # another directory, the same tokenizer: allowed
    allowed = ["--train.max_iters=10", "--train.eval_interval=5", "--train.log_interval=2", "--model.dropout=0.2",
               "--model.attention=manual", f"--data.dir={data}", "--train.learning_rate=2e-3"]
    assert cli_main(["train", "--resume", str(run), "--quiet", *allowed]) == 0
    capsys.readouterr()
    assert (run / ckpt.TOKENIZER).read_bytes() == header[ckpt.TOKENIZER]
    cfg = ckpt.read_config(run)
    assert (cfg.train.max_iters, cfg.train.eval_interval, cfg.model.dropout, cfg.model.attention, cfg.data.dir) == \
        (10, 5, 0.2, "manual", str(data))
    assert ckpt.read_trainer_info(run)["step"] == 10


def test_resume_is_not_confused_by_an_older_spelling_of_the_same_config(trained, tmp_path, capsys):
    """config.json of an older version (model.bias as a bool) resumes and is left as it was."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    raw = json.loads((run / "config.json").read_text())
    raw["config"]["model"]["bias"] = False
    (run / "config.json").write_text(json.dumps(raw))
    before = (run / "config.json").read_bytes()
    assert cli_main(["train", "--resume", str(run), "--quiet"]) == 0  # finished already: nothing to train
    capsys.readouterr()
    assert (run / "config.json").read_bytes() == before


# ---- leftovers and damaged files ------------------------------------------------------------------------

def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_leftovers_of_killed_writers_are_cleaned_by_the_next_run(trained, small_text_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    pid = dead_pid()
    stale = [run / f".model.safetensors.{pid}.a1b2c3.tmp", run / f".loss.png.{pid}.d4e5f6.png.tmp",
             run / f".trainer_state.safetensors.{pid}.x.tmp"]
    staging = tmp_path / f".run.{pid}.zz9.tmp"  # a killed --force run's staging directory
    kept = [run / f".model.safetensors.{os.getpid()}.live.tmp", run / "notes.tmp", tmp_path / f".run2.{pid}.q.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    staging.mkdir()
    (staging / "metrics.jsonl").write_text("{}\n")
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=5"]) == 0
    capsys.readouterr()
    assert not any(p.exists() for p in stale) and not staging.exists()
    assert all(p.read_bytes() == b"x" for p in kept)


def test_damaged_optional_files_never_stop_a_resume(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:3]) + b"\xff\xfe garbage\n[1, 2]\n\"text\"\n" +
                                        b"".join(lines[3:]) + lines[-1][:9])  # a cut last line too
    (run / "loss.png").write_bytes(b"not a png")
    (run / ckpt.STATE_JSON).write_text('{"step": 99, trunc')
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=6"]) == 0
    capsys.readouterr()
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn again
    assert json.loads((run / ckpt.STATE_JSON).read_text())["step"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 7))
    (run / "metrics.jsonl").unlink()
    (run / "loss.png").unlink()
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=7"]) == 0  # missing: fine too
    assert load_file(run / ckpt.MODEL)["wte.weight"].isfinite().all()


REQUIRED = {
    ckpt.CONFIG: lambda p: p.write_text('{"format_version": 1, "config": {'),
    ckpt.TOKENIZER: lambda p: p.write_bytes(b"\x00\xff"),
    ckpt.STATE: lambda p: p.write_bytes(p.read_bytes()[:100]),
}


@pytest.mark.parametrize("name", list(REQUIRED))
def test_a_damaged_required_file_is_one_sentence_naming_it(name, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    REQUIRED[name](run / name)
    before = snapshot(run)
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.max_iters=6"]) == 2
    line = one_error(capsys)
    assert f"'{run / name}'" in line and ("damaged" in line or "not a valid" in line), line
    assert snapshot(run) == before


def test_a_run_killed_before_its_first_checkpoint_does_not_block_the_same_command(trained, small_text_dir, tmp_path,
                                                                                    capsys):
    """What a kill -9 leaves before the first checkpoint's config.json: metrics and maybe some weights, but no
    config.json. That is no run: --resume says so, and the command that started it starts it again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 3.0}\n')
    shutil.copy(trained / ckpt.MODEL_BEST, run / ckpt.MODEL_BEST)  # a first checkpoint cut short
    assert cli_main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "holds no checkpoint yet" in one_error(capsys)
    rec = recipe(tmp_path, small_text_dir, seed=3, eval_interval=4)
    assert cli_main(["train", str(rec), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert step_of(run / ckpt.MODEL_BEST) == 4  # its own best, not the leftover's (step 2)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and steps.count(1) == 1


def test_interrupted_in_process_raises_with_the_signal(small_text_dir, tmp_path, monkeypatch):
    from conftest import tiny_config

    signal_after(monkeypatch, 2, signal.SIGHUP)
    with pytest.raises(Interrupted) as e:
        loop.train(tiny_config(small_text_dir, max_iters=50), out_dir=tmp_path / "run", progress=False)
    assert e.value.exit_code == 128 + signal.SIGHUP and "SIGHUP at step 2" in str(e.value)
    assert torch.equal(load_file(tmp_path / "run" / ckpt.MODEL)["wte.weight"],
                       load_file(tmp_path / "run" / ckpt.STATE)["model.wte.weight"])


def test_resume_into_another_directory_leaves_the_source_run(trained, tmp_path, capsys):
    """`--resume RUN --out OTHER` continues a copy: OTHER is a new run directory (refused if it holds a run),
    RUN is not written."""
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(trained, run)
    before = snapshot(run)
    assert cli_main(["train", "--resume", str(run), "--out", str(other), "--quiet", "--train.max_iters=6"]) == 0
    capsys.readouterr()
    assert snapshot(run) == before
    assert ckpt.read_trainer_info(other)["step"] == 6 and ckpt.read_config(other).train.max_iters == 6
    assert (other / ckpt.TOKENIZER).read_bytes() == before[ckpt.TOKENIZER]
    assert cli_main(["train", "--resume", str(run), "--out", str(other), "--quiet", "--train.max_iters=6"]) == 2
    assert "already holds a run" in one_error(capsys)


def test_a_signal_during_set_up_saves_after_the_first_step(small_text_dir, tmp_path, monkeypatch):
    from conftest import tiny_config

    real = loop.build_setup

    def build_setup(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # while the model is being built
        return real(*a, **k)

    monkeypatch.setattr(loop, "build_setup", build_setup)
    with pytest.raises(Interrupted, match="SIGTERM at step 1"):
        loop.train(tiny_config(small_text_dir, max_iters=50), out_dir=tmp_path / "run", progress=False)
    assert ckpt.read_trainer_info(tmp_path / "run")["step"] == 1


def test_force_through_a_symlink_replaces_the_real_directory(trained, small_text_dir, tmp_path, capsys):
    real, link = tmp_path / "real", tmp_path / "link"
    shutil.copytree(trained, real)
    link.symlink_to(real)
    assert cli_main(["train", str(recipe(tmp_path, small_text_dir, name="new", seed=7)), "--out", str(link),
                     "--force", "--quiet"]) == 0
    capsys.readouterr()
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert ckpt.read_config(link).name == "new" and ckpt.read_trainer_info(real)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "new.toml", "real"]

"""Training: exact resume, schedule, weight decay, accumulation, NaN guard, Ctrl-C, run artifacts, bigram."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main as cli_main
from scratchgpt.config import TrainConfig, from_dict, load_recipe
from scratchgpt.errors import UserError
from scratchgpt.models import GPT, GPTConfig
from scratchgpt.optim import configure_optimizer, lr_at
from scratchgpt.train import train

N = 6  # steps before and after the resume point


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def resume_config(data_dir, max_iters: int):
    # the schedule's horizon is pinned (lr_decay_iters) so that the short run follows the long one's lr;
    # two micro-batches per step, so the data position saved mid-stream matters too
    return tiny_config(data_dir, max_iters=max_iters, lr_decay_iters=2 * N, eval_interval=N, grad_accum_steps=2)


@pytest.fixture(scope="module")
def straight_run(small_text_dir, tmp_path_factory) -> Path:
    """2N steps in one go (dropout 0.1, so the RNG state matters on resume)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = resume_config(small_text_dir, 2 * N)
    assert cfg.model.dropout > 0
    train(cfg, out_dir=out, progress=False)
    return out


# ---- exact resume -----------------------------------------------------------------------------------

def test_resume_is_exact(straight_run, small_text_dir, tmp_path):
    run = tmp_path / "run"
    first = train(resume_config(small_text_dir, N), out_dir=run, progress=False)
    assert first.step == N
    # what `scratchgpt train --resume RUN --train.max_iters=2N` does, in a fresh model
    cfg = ckpt.read_config(run, [f"--train.max_iters={2 * N}"])
    second = train(cfg, resume=run, progress=False)
    assert second.step == 2 * N

    straight, resumed = rows(straight_run, "train"), rows(run, "train")
    assert [r["step"] for r in resumed] == list(range(1, 2 * N + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bit for bit, not approx
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]
    a, b = load_file(straight_run / ckpt.MODEL), load_file(run / ckpt.MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_file(straight_run / ckpt.STATE), load_file(run / ckpt.STATE)
    optim = [k for k in sa if k.startswith("optim.")]
    assert optim and all(torch.equal(sa[k], sb[k]) for k in optim)


# ---- schedule, weight decay, accumulation -----------------------------------------------------------

def test_lr_warmup_is_linear_then_cosine_to_min_lr():
    t = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110, lr_schedule="cosine")
    warm = [lr_at(s, t) for s in range(11)]
    assert 0 < warm[0] < warm[9] < t.learning_rate
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(math.isclose(d, steps[0], rel_tol=1e-9) for d in steps)  # linear, ending at learning_rate
    assert warm[10] == t.learning_rate
    span = t.learning_rate - t.min_lr
    for frac in (0.25, 0.5, 0.75):  # cosine over the 100 decay steps
        want = t.min_lr + span * (1 + math.cos(math.pi * frac)) / 2
        assert math.isclose(lr_at(10 + int(100 * frac), t), want, rel_tol=1e-12)
    assert math.isclose(lr_at(60, t), (1e-3 + 1e-4) / 2, rel_tol=1e-12)
    decay = [lr_at(s, t) for s in range(10, 111)]
    assert all(b < a for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at(110, t) == lr_at(5000, t) == t.min_lr


def test_lr_decay_horizon_linear_and_constant():
    t = TrainConfig(learning_rate=1e-3, min_lr=0.0, warmup_iters=0, max_iters=100, lr_decay_iters=50,
                    lr_schedule="linear")
    assert lr_at(0, t) == 1e-3
    assert math.isclose(lr_at(25, t), 5e-4) and math.isclose(lr_at(40, t), 2e-4)
    assert lr_at(50, t) == lr_at(99, t) == 0.0
    c = replace(t, lr_schedule="constant", warmup_iters=10)
    assert {lr_at(s, c) for s in (0, 5, 10, 50, 99)} == {1e-3}


def test_wsd_holds_the_lr_then_cools_down_linearly_over_the_last_fraction_and_follows_the_clock():
    t = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=0, max_iters=100, lr_schedule="wsd",
                    cooldown_frac=0.25)
    assert {lr_at(s, t) for s in (0, 40, 75)} == {1e-3}  # stable until 75% of the span
    assert math.isclose(lr_at(80, t), 1e-4 + 0.8 * 9e-4) and math.isclose(lr_at(90, t), 1e-4 + 0.4 * 9e-4)
    assert lr_at(100, t) == lr_at(500, t) == 1e-4
    assert math.isclose(lr_at(1, t, time_frac=0.9), lr_at(90, t))  # the clock's progress when it is ahead


def test_weight_decay_applies_to_matrices_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=True))
    t = TrainConfig(weight_decay=0.1, learning_rate=0.5)
    opt = configure_optimizer(model, t, torch.device("cpu"))
    groups = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(groups) == {0.1, 0.0}
    assert groups[0.1] and all(p.dim() == 2 for p in groups[0.1])
    assert groups[0.0] and all(p.dim() == 1 for p in groups[0.0])
    all_ids = [id(p) for g in groups.values() for p in g]
    assert sorted(all_ids) == sorted({id(p) for p in model.parameters()})  # each once; the tied matrix once
    # with zero gradients AdamW moves nothing but the decay: matrices shrink by (1 - lr * wd), the rest stay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * (1 - 0.5 * 0.1) if p.dim() == 2 else before[n]
        assert torch.allclose(p, want, atol=1e-7, rtol=0), n
    assert any(n.endswith("bias") for n in before) and any("ln_" in n for n in before)


def test_gradient_accumulation_matches_one_big_batch(small_text_dir, tmp_path):
    # two micro-batches of 4 draw the same windows as one batch of 8, and the mean of their mean losses
    # is the big batch's mean loss: one step must land on the same weights
    big = tiny_config(small_text_dir, max_iters=1, batch_size=8, grad_clip=0.0, eval_iters=1)
    big = replace(big, model=replace(big.model, dropout=0.0))
    small = replace(big, train=replace(big.train, batch_size=4, grad_accum_steps=2))
    train(big, out_dir=tmp_path / "big", progress=False)
    train(small, out_dir=tmp_path / "small", progress=False)
    a, b = load_file(tmp_path / "big" / ckpt.MODEL), load_file(tmp_path / "small" / ckpt.MODEL)
    init = GPT(replace(big.model, vocab_size=a["wte.weight"].shape[0]))
    assert not torch.equal(a["wte.weight"], init.wte.weight)  # it did move
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


# ---- NaN guard --------------------------------------------------------------------------------------

def test_nan_loss_stops_with_user_error_and_keeps_last_checkpoint(small_text_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # checkpoints every 4 steps; the third step after resuming (step 7) diverges, before the next save
    train(tiny_config(small_text_dir, max_iters=4, eval_interval=4), out_dir=run, progress=False)
    saved = {name: (run / name).read_bytes() for name in (ckpt.MODEL, ckpt.MODEL_BEST, ckpt.STATE)}

    real_forward = GPT.forward
    calls = {"n": 0}

    def poisoned_forward(self, *args, **kwargs):
        logits, loss = real_forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 3:  # the third training step diverges
                return logits * float("nan"), loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned_forward)
    cfg = ckpt.read_config(run, ["--train.max_iters=20"])
    with pytest.raises(UserError) as e:
        train(cfg, resume=run, progress=False)
    msg = str(e.value)
    assert "nan" in msg and "at step 7" in msg and "last good checkpoint" in msg
    monkeypatch.undo()
    for name, data in saved.items():
        assert (run / name).read_bytes() == data, name
    model, _, _ = ckpt.load_model(run, which="last")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((run / ckpt.STATE_JSON).read_text())["step"] == 4


# ---- run artifacts and the bigram -------------------------------------------------------------------

def test_run_directory_artifacts(straight_run):
    names = {p.name for p in straight_run.iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors", "model-best.safetensors",
            "trainer_state.safetensors", "trainer_state.json", "metrics.jsonl", "loss.png"} <= names
    assert (straight_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train_rows, eval_rows = rows(straight_run, "train"), rows(straight_run, "eval")
    assert len(train_rows) == 2 * N and all(math.isfinite(r["loss"]) for r in train_rows)
    assert [r["step"] for r in eval_rows] == [N, 2 * N]
    state = json.loads((straight_run / "trainer_state.json").read_text())
    assert state["step"] == 2 * N
    assert state["best_val"] == min(r["val_loss"] for r in eval_rows)
    best_step = min(eval_rows, key=lambda r: r["val_loss"])["step"]
    from safetensors import safe_open

    with safe_open(str(straight_run / ckpt.MODEL_BEST), framework="pt") as f:
        assert int(f.metadata()["step"]) == best_step
    for which in ("best", "last"):
        model, tok, cfg = ckpt.load_model(straight_run, which=which)
        assert model.config.vocab_size == tok.vocab_size


def test_bigram_learns_the_small_corpus(small_text_dir, tmp_path):
    cfg = from_dict({
        "data": {"dir": str(small_text_dir)},
        "model": {"arch": "bigram", "block_size": 8},
        "train": {"max_iters": 300, "batch_size": 32, "learning_rate": 1e-2, "lr_schedule": "constant",
                  "warmup_iters": 0, "weight_decay": 0.01, "grad_clip": 0.0, "eval_interval": 300, "eval_iters": 10,
                  "log_interval": 50, "device": "cpu", "dtype": "float32", "eval_at_start": True},
    })
    result = train(cfg, out_dir=tmp_path / "bigram", progress=False)
    first = rows(tmp_path / "bigram", "eval")[0]
    vocab = json.loads((small_text_dir / "meta.json").read_text())["vocab_size"]
    assert first["step"] == 0 and abs(first["val_loss"] - math.log(vocab)) < 0.05  # uniform start
    assert result.last_eval["val"] < 3.0 < first["val_loss"]


# ---- Ctrl-C, SIGTERM, SIGHUP -------------------------------------------------------------------------

def signal_recipe(data_dir: Path, tmp_path: Path, eval_interval: int = 100000) -> Path:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'[data]\ndir = "{data_dir}"\n'
        "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\ndropout = 0.1\n"
        "[train]\nmax_iters = 1000000\nlr_decay_iters = 1000\nbatch_size = 4\nlog_interval = 1\n"
        f'eval_interval = {eval_interval}\neval_iters = 2\nwarmup_iters = 2\ndevice = "cpu"\n'
    )
    return recipe


def wait_for(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    assert ready(), "the run never got there"


def metrics_lines(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_saves_and_resume_continues_exactly(small_text_dir, tmp_path, signum):
    """Ctrl-C, `kill` (docker stop, SLURM, systemd) and a closed terminal: save, say so, exit 128 + signal."""
    recipe = signal_recipe(small_text_dir, tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scratchgpt.cli", "train", str(recipe), "--out", str(run), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(proc, lambda: metrics_lines(run) >= 1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"stopped by {signum.name} at step" in err and "--resume" in err
    state = json.loads((run / ckpt.STATE_JSON).read_text())
    stopped = state["step"]
    assert stopped >= 1
    model, _, _ = ckpt.load_model(run, which="last")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # --resume continues from the saved step (in-process: the same CLI code, without a second start-up)
    assert cli_main(["train", "--resume", str(run), "--quiet", f"--train.max_iters={stopped + 3}"]) == 0
    assert json.loads((run / ckpt.STATE_JSON).read_text())["step"] == stopped + 3
    resumed = rows(run, "train")
    assert [r["step"] for r in resumed] == list(range(1, stopped + 4))
    # and exactly: the interrupted-then-resumed run is the run that was never interrupted
    straight = tmp_path / "straight"
    train(load_recipe(recipe, [f"--train.max_iters={stopped + 3}"]), out_dir=straight, progress=False)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in rows(straight, "train")]
    a, b = load_file(run / ckpt.MODEL), load_file(straight / ckpt.MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


SLOW_SIGNAL_SAVE = r"""
import os, sys, time
from scratchgpt.cli import main
from scratchgpt.train.writer import RunWriter
real_save, real_replace, saving = RunWriter.save, os.replace, []
def save(self, progress, data_state, elapsed, eval_losses=None, **k):
    saving.append(eval_losses is None)  # None: the save a first signal asks for
    return real_save(self, progress, data_state, elapsed, eval_losses, **k)
def replace(*a, **k):  # inside that save, each file is written and then waits to be renamed into place
    if saving and saving[-1]:
        print("writing", file=sys.stderr, flush=True)
        time.sleep(120)
    return real_replace(*a, **k)
RunWriter.save, os.replace = save, replace
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(small_text_dir, tmp_path):
    recipe = signal_recipe(small_text_dir, tmp_path, eval_interval=3)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SIGNAL_SAVE, "train", str(recipe), "--out", str(run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = b""
    try:
        wait_for(proc, lambda: (run / ckpt.STATE_JSON).is_file())  # the checkpoint at step 3 is whole
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 60
        while b"writing\n" not in err and time.time() < deadline:  # the first signal's save is under way
            if select.select([proc.stderr], [], [], 1)[0]:
                err += os.read(proc.stderr.fileno(), 65536) or b""
        assert b"writing\n" in err, err
        proc.send_signal(signal.SIGTERM)
        err += proc.communicate(timeout=60)[1]  # not the 120 s the write would wait
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert text.strip().splitlines()[-1] == ("error: stopped at once by a second SIGTERM, without saving; the last "
                                             "checkpoint is kept") and "Traceback" not in text, text
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []  # the half-done write was removed
    step = ckpt.read_trainer_info(run)["step"]
    assert step % 3 == 0 and ckpt.load_model(run, which="last")[0] is not None  # an evaluation's checkpoint
    assert cli_main(["train", "--resume", str(run), "--quiet", f"--train.max_iters={step + 2}"]) == 0


def test_device_names():
    from scratchgpt.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_schedule_by_time_decays_by_the_clock():
    """With train.schedule_by_time the decay is as far along as the larger of steps and elapsed time."""
    from scratchgpt.config import from_dict
    from scratchgpt.optim import lr_at

    t = from_dict({"train": {"max_iters": 1000, "warmup_iters": 10, "learning_rate": 1e-3, "min_lr": 1e-4,
                             "time_limit": 100.0, "schedule_by_time": True}}).train
    assert lr_at(500, t, 0.0) == pytest.approx(lr_at(500, t))  # clock behind the steps: steps decide
    assert lr_at(20, t, 0.5) == pytest.approx(lr_at(505, t))  # clock ahead: half the decay is done
    assert lr_at(20, t, 1.0) == pytest.approx(1e-4)  # deadline: min_lr
    assert lr_at(5, t, 0.9) == lr_at(5, t)  # warmup is by steps


def test_schedule_by_time_needs_a_time_limit():
    from scratchgpt.config import from_dict
    from scratchgpt.errors import ConfigError

    with pytest.raises(ConfigError, match="time_limit"):
        from_dict({"train": {"schedule_by_time": True}})


def test_eval_at_start_logs_the_untrained_loss(small_text_dir, tmp_path):
    import math

    from scratchgpt.train import train

    cfg = tiny_config(small_text_dir, max_iters=4, eval_at_start=True)
    train(cfg, out_dir=tmp_path / "run", progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals[0]["step"] == 0
    vocab = json.loads((small_text_dir / "meta.json").read_text())["vocab_size"]
    assert abs(evals[0]["val_loss"] - math.log(vocab)) < 0.15  # GPT-2 init: near-uniform predictions

"""Data-parallel training on CPU with gloo: 2 ranks x B/2 follow 1 rank x B, resume across world sizes,
a dead rank ends the job with one sentence, and launches that cannot work are refused up front."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchgpt.cli import main as cli_main
from scratchgpt.config import from_dict
from scratchgpt.data import BatchLoader
from scratchgpt.distributed import DistributedError, shard_bounds
from scratchgpt.train import train

# a dropout-free model so that 2 ranks and 1 process compute the same thing up to summation order;
# grad_accum 2 exercises no_sync, an odd eval batch splits unevenly over the ranks
MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0}
TRAIN = {"batch_size": 8, "grad_accum_steps": 2, "eval_interval": 6, "eval_iters": 2, "eval_batch_size": 7,
         "full_val": True, "log_interval": 1, "warmup_iters": 2, "lr_decay_iters": 12, "device": "cpu",
         "dtype": "float32", "threads": 1, "dist_timeout": 20.0}
TOL = 1e-5  # float reduction order differs between one process and all-reduced shards


def _config(data_dir: Path, **train_over):
    return from_dict({"data": {"dir": str(data_dir)}, "model": MODEL, "train": {**TRAIN, **train_over}}, name="dist")


def _recipe(tmp: Path, data_dir: Path) -> Path:
    body = [f'[data]\ndir = "{data_dir}"', "[model]", *(f"{k} = {json.dumps(v)}" for k, v in MODEL.items()), "[train]"]
    body += [f"{k} = {json.dumps(v)}" for k, v in TRAIN.items()]
    path = tmp / "dist.toml"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(nproc: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "scratchgpt.cli", "train", "--quiet", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _curve(run_dir: Path, kind: str = "train") -> dict[int, float]:
    key = "loss" if kind == "train" else "val_loss"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if r["kind"] == kind}


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Whatever happens inside, no process is left running."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(small_text_dir, tmp_path_factory):
    """One process, 12 steps straight; two ranks, the first 6 steps (checkpoint at 6)."""
    tmp = tmp_path_factory.mktemp("dist")
    one = train(_config(small_text_dir, max_iters=12), out_dir=tmp / "one", progress=False)
    recipe = _recipe(tmp, small_text_dir)
    r = _torchrun(2, str(recipe), "--out", str(tmp / "two6"), "--train.max_iters=6")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "data": small_text_dir, "one": one.run_dir, "two6": tmp / "two6", "stderr": r.stderr}


@pytest.mark.slow
def test_two_ranks_follow_one_process_with_the_same_global_batch(runs):
    one, two = _curve(runs["one"]), _curve(runs["two6"])
    assert sorted(two) == list(range(1, 7))
    np.testing.assert_allclose([two[s] for s in two], [one[s] for s in two], rtol=TOL)
    np.testing.assert_allclose(_curve(runs["two6"], "eval")[6], _curve(runs["one"], "eval")[6], rtol=TOL)
    assert runs["stderr"].count("step 6: train loss") == 1  # only rank 0 speaks
    assert "Traceback" not in runs["stderr"]


@pytest.mark.slow
def test_two_rank_run_resumes_on_two_ranks_and_on_one(runs):
    tmp = runs["tmp"]
    on_two, on_one = tmp / "resume2", tmp / "resume1"
    shutil.copytree(runs["two6"], on_two)
    shutil.copytree(runs["two6"], on_one)
    r = _torchrun(2, "--resume", str(on_two), "--train.max_iters=12")
    assert r.returncode == 0, r.stderr[-3000:]
    from scratchgpt.checkpoint import read_config

    train(read_config(on_one, ["--train.max_iters=12"]), resume=on_one, progress=False)
    straight = _curve(runs["one"])
    for resumed in (on_two, on_one):
        curve = _curve(resumed)
        assert sorted(curve) == list(range(1, 13))  # the log reads as one run
        np.testing.assert_allclose([curve[s] for s in range(7, 13)], [straight[s] for s in range(7, 13)], rtol=TOL)
        np.testing.assert_allclose(_curve(resumed, "eval")[12], _curve(runs["one"], "eval")[12], rtol=TOL)
    state = json.loads((on_two / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["world_size"] == 2


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_job_with_one_sentence(runs, tmp_path):
    """Rank 1 exits mid-run; rank 0 must stop with a clear error, not hang (no torchrun to rescue it)."""
    port = _free_port()
    args = ["train", str(_recipe(tmp_path, runs["data"])), "--out", str(tmp_path / "run"), "--quiet",
            "--train.max_iters=50", "--train.eval_interval=50", "--train.dist_timeout=15"]
    # rank 1 dies with exit code 0 after a few batches, as a rank that returns early would
    dying = ("import os, sys; from scratchgpt import data; from scratchgpt.cli import main\n"
             "get, n = data.BatchLoader.get_batch, [0]\n"
             "def dead(self):\n    n[0] += 1\n    if n[0] == 5: os._exit(0)\n    return get(self)\n"
             "data.BatchLoader.get_batch = dead\nsys.exit(main(sys.argv[1:]))\n")
    procs = []
    start = time.time()
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [sys.executable, "-m", "scratchgpt.cli", *args] if rank == 0 else [sys.executable, "-c", dying, *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    with _reaped(procs):
        _, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 2, err[-3000:]
    assert "error: rank 0 lost contact with the other ranks" in err
    assert "Traceback" not in err
    assert time.time() - start < 120


SLOW_STEPS = ("import sys, time\nfrom scratchgpt.cli import main\nfrom scratchgpt.train import loop\n"
              "real = loop.train_step\n"
              "def step(*a, **k):\n    time.sleep(0.05)\n    return real(*a, **k)\n"
              "loop.train_step = step\nsys.exit(main(sys.argv[1:]))\n")  # a few steps per poll of the test


@pytest.mark.slow
@pytest.mark.parametrize("targets", [(1,), (0, 1)], ids=["to_rank_1", "to_every_rank"])
def test_sigterm_to_ranks_saves_one_checkpoint_and_every_rank_exits(runs, tmp_path, targets):
    """SIGTERM to one rank (the one that does not write) or to all: the ranks agree at the next log step, rank
    0 saves one checkpoint, every rank says why it stopped and exits 143; one process resumes it and follows
    the uninterrupted run."""
    port = _free_port()
    run = tmp_path / "run"
    args = ["train", str(_recipe(tmp_path, runs["data"])), "--out", str(run), "--quiet", "--train.max_iters=1000",
            "--train.eval_interval=1000"]
    procs = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", SLOW_STEPS, *args], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    with _reaped(procs):
        deadline = time.time() + 120
        while time.time() < deadline and all(p.poll() is None for p in procs) and len(_curve(run) if (
                run / "metrics.jsonl").is_file() else {}) < 2:
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        for rank in targets:
            procs[rank].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    for rank, (p, err) in enumerate(zip(procs, errs, strict=True)):
        why = "SIGTERM" if rank in targets else "a signal to another rank"
        assert p.returncode == 143 and f"error: stopped by {why} at step" in err and "Traceback" not in err, err
    state = json.loads((run / "trainer_state.json").read_text())
    stopped = state["step"]
    assert state["world_size"] == 2 and max(_curve(run)) == stopped < 12
    from scratchgpt.checkpoint import read_config

    train(read_config(run, ["--train.max_iters=12"]), resume=run, progress=False)
    resumed, straight = _curve(run), _curve(runs["one"])
    assert sorted(resumed) == list(range(1, 13))
    np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [straight[s] for s in range(1, 13)], rtol=TOL)


def test_world_size_that_does_not_divide_the_batch_is_one_sentence(small_text_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match=r"batch_size \(8\) is the global batch .* 3 processes"):
        train(_config(small_text_dir), out_dir=tmp_path / "x", progress=False)
    recipe = _recipe(tmp_path, small_text_dir)
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.batch_size (8)") and "Traceback" not in err


def test_missing_rendezvous_is_one_sentence(small_text_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR and MASTER_PORT are not set.*torchrun"):
        train(_config(small_text_dir), out_dir=tmp_path / "x", progress=False)


def test_rendezvous_that_never_completes_times_out(small_text_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    start = time.time()
    with pytest.raises(DistributedError, match="could not meet the other ranks .* within 2 s"):
        train(_config(small_text_dir, dist_timeout=2.0), out_dir=tmp_path / "x", progress=False)
    assert time.time() - start < 60


@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_shards_cover_a_batch_once(n, world):
    rows = [r for rank in range(world) for r in range(*shard_bounds(n, rank, world))]
    assert rows == list(range(n))


def test_sharded_loaders_together_draw_the_unsharded_batch(small_text_dir):
    whole = BatchLoader(small_text_dir, "train", 8, 6, seed=3)
    parts = [BatchLoader(small_text_dir, "train", 8, 6, seed=3, shard=(r, 4)) for r in range(4)]
    for _ in range(3):
        x, y = whole.get_batch()
        xs, ys = zip(*(p.get_batch() for p in parts), strict=True)
        assert [len(p) for p in xs] == [1, 2, 1, 2]
        assert (np.concatenate(xs) == x.numpy()).all() and (np.concatenate(ys) == y.numpy()).all()
    assert all((p.state() == whole.state()).all() for p in parts)  # one stream, whatever the world size


@pytest.mark.slow
def test_fsdp_follows_one_process_and_its_checkpoint_resumes_unsharded(runs):
    tmp = runs["tmp"]
    r = _torchrun(2, str(tmp / "dist.toml"), "--out", str(tmp / "fsdp6"), "--train.max_iters=6", "--train.fsdp=true")
    assert r.returncode == 0, r.stderr[-3000:]
    one, sharded = _curve(runs["one"]), _curve(tmp / "fsdp6")
    np.testing.assert_allclose([sharded[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=TOL)
    from scratchgpt.checkpoint import read_config

    # the checkpoint is the usual unsharded file: one process continues it
    train(read_config(tmp / "fsdp6", ["--train.max_iters=12", "--train.fsdp=false"]), resume=tmp / "fsdp6",
          progress=False)
    resumed = _curve(tmp / "fsdp6")
    np.testing.assert_allclose([resumed[s] for s in range(7, 13)], [one[s] for s in range(7, 13)], rtol=TOL)


def test_fsdp_misuse_is_one_sentence(small_text_dir, tmp_path):
    from scratchgpt.config import ConfigError

    with pytest.raises(ConfigError, match="Muon needs whole matrices"):
        _config(small_text_dir, fsdp=True, optimizer="muon")
    with pytest.raises(DistributedError, match="train.fsdp shards the model over several processes"):
        train(_config(small_text_dir, fsdp=True), out_dir=tmp_path / "x", progress=False)


# Each rank records the lr it set at every step; rank 1 starts its clock 1.5 s after rank 0, so ranks that
# followed their own clocks would decay their lrs differently under train.schedule_by_time.
CLOCK_PROBE = """import atexit, json, os, sys, time
from scratchgpt.cli import main
from scratchgpt.train import loop
rank, seen = int(os.environ["RANK"]), []
real = loop.set_lr
def set_lr(optimizer, step, t, time_frac=None):
    lr = real(optimizer, step, t, time_frac)
    seen.append((step, lr))
    return lr
loop.set_lr = set_lr
atexit.register(lambda: open(os.environ["PROBE"] + f"/rank{rank}.json", "w").write(json.dumps(seen)))
if rank == 1:
    time.sleep(1.5)
sys.exit(main(sys.argv[1:]))
"""
CLOCK_LIMIT = 6.0  # seconds from launch; the ranks spend the first few importing torch and building the run


def _clock_args(recipe: Path, out: Path) -> list[str]:
    return ["train", str(recipe), "--out", str(out), "--quiet", "--train.max_iters=100000",
            "--train.eval_interval=100000", "--train.log_interval=3", f"--train.time_limit={CLOCK_LIMIT}",
            "--train.schedule_by_time=true", "--train.warmup_iters=0"]


def _ended_on_time(run: Path, err: str) -> int:
    """The step the run stopped at, after checking it stopped because of the time limit, soon after it."""
    state = json.loads((run / "trainer_state.json").read_text())
    assert f"time limit of {CLOCK_LIMIT:g} s reached at step {state['step']}" in err, err[-3000:]
    assert CLOCK_LIMIT <= state["elapsed"] < CLOCK_LIMIT + 60  # the last log step's check, one evaluation, a save
    assert state["world_size"] == 2 and 0 < state["step"] < 100000
    return state["step"]


@pytest.mark.slow
def test_a_clock_driven_run_under_torchrun_follows_rank_0s_clock(runs, tmp_path):
    """train.schedule_by_time on 2 ranks: every rank sets the same lr at every step and stops at the same step,
    near the time limit; the lr decays over it."""
    script = tmp_path / "probe.py"
    script.write_text(CLOCK_PROBE, encoding="utf-8")
    run, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *_clock_args(_recipe(tmp_path, runs["data"]), run)]
    r = subprocess.run(cmd, env={**_env(), "PROBE": str(probe)}, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    stopped = _ended_on_time(run, r.stderr)
    lrs = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert lrs[0] == lrs[1]  # the same (step, lr) pairs on both ranks
    assert [s for s, _ in lrs[0]] == list(range(stopped))
    assert lrs[0][-1][1] < lrs[0][0][1]  # the lr decayed with the clock (no step-based decay in 100,000 steps)
    logged = {row["step"]: row["lr"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if row["kind"] == "train"}
    assert all(logged[s + 1] == lr for s, lr in lrs[0] if s + 1 in logged)  # rank 0's log is that lr


@pytest.mark.slow
def test_a_two_node_launch_on_one_machine_trains_and_ends_on_time(runs, tmp_path):
    """Two torchrun launchers, one process each (--nnodes 2, --node_rank 0 and 1), meeting on 127.0.0.1."""
    port, run = _free_port(), tmp_path / "run"
    args = _clock_args(_recipe(tmp_path, runs["data"]), run)
    launchers = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "scratchgpt.cli", *args]
        launchers.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    with _reaped(launchers):
        errs = [p.communicate(timeout=180)[1] for p in launchers]
    for p, err in zip(launchers, errs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    _ended_on_time(run, errs[0])
    assert "time limit" not in errs[1]  # rank 1 (node 1) says nothing; rank 0 speaks for the run

"""Re-preparing into an existing data directory and being killed (SIGKILL) at any moment leaves either the
old complete data or the new complete data, loadable by `BatchLoader`, and the next run cleans up.

A warm "zygote" process imports scratchgpt once and forks one `scratchgpt prepare` per trial; in the fork,
every file-system step of the write (each shard or id file written, each fsync, link, rename, exchange,
removal) first reports itself and waits for a go-ahead. Trial k is killed with SIGKILL just before its k-th
step, for every k until a trial runs to the end, so every moment between two steps is covered.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scratchgpt import fileio
from scratchgpt.cli import main as cli_main
from scratchgpt.data import BatchLoader, load_meta

ZYGOTE = r"""
import json, os, pathlib, shutil, sys
from scratchgpt import cli, corpus, data, fileio

argv, exchange = json.loads(sys.argv[1]), sys.argv[2] == "1"

def line():
    out = b""
    while not out.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            os._exit(4)
        out += c
    return out.decode().strip()

def say(text):
    os.write(1, (text + "\n").encode())

def gate(name, fn):
    def wrapped(*a, **k):
        say("op " + name)
        if line() != "go":
            os._exit(3)
        return fn(*a, **k)
    return wrapped

while line() == "run":
    pid = os.fork()
    if pid == 0:
        os.fsync, os.replace, os.rename, os.link = (gate(n, getattr(os, n)) for n in ("fsync", "replace", "rename", "link"))
        shutil.rmtree = gate("rmtree", shutil.rmtree)
        fileio._exchange = gate("exchange", fileio._exchange if exchange else lambda a, b: False)
        data._write_ids = gate("write_ids", data._write_ids)
        corpus._ShardWriter.write = gate("write_shard", corpus._ShardWriter.write)
        pathlib.Path.write_text = gate("write_text", pathlib.Path.write_text)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(cli.main(argv))
    say("pid %d" % pid)
    _, status = os.waitpid(pid, 0)
    say("exit %d" % status)
"""


class Zygote:
    def __init__(self, argv: list[str], exchange: bool, cwd: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, json.dumps(argv), "1" if exchange else "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, cwd=cwd, env=env)

    def read(self) -> str:
        out = b""
        while not out.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            assert ready, "the prepare process stopped answering"
            c = os.read(self.proc.stdout.fileno(), 1)
            assert c, "the zygote died"
            out += c
        return out.decode().strip()

    def send(self, text: str) -> None:
        os.write(self.proc.stdin.fileno(), (text + "\n").encode())

    def trial(self, kill_at: int) -> bool:
        """Run prepare once, SIGKILL it just before its kill_at-th step; True when it was killed."""
        self.send("run")
        pid = int(self.read().split()[1])
        steps = 0
        while True:
            msg = self.read()
            if msg.startswith("exit"):
                assert msg == "exit 0", f"prepare failed on its own ({msg})"
                return False
            steps += 1
            if steps == kill_at:
                os.kill(pid, signal.SIGKILL)
                assert self.read() == f"exit {signal.SIGKILL}"
                return True
            self.send("go")

    def close(self) -> None:
        self.send("stop")
        self.proc.wait(timeout=60)


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


CORPUS = ["--workers", "1", "--txt-docs", "line", "--shard-tokens", "1000"]  # streamed into several shards


@pytest.mark.parametrize("kind, exchange", [("text", True), ("corpus", True), ("corpus", False)],
                         ids=["prepare_text", "prepare_corpus", "prepare_corpus-no-exchange"])
def test_killed_reprepare_leaves_old_or_new_data(tmp_path, monkeypatch, kind, exchange):
    monkeypatch.chdir(tmp_path)
    old_text = "".join(f"old line {i}: to be or not to be\n" for i in range(60))
    new_text = "".join(f"NEW line {i}, quite different; with other characters!\n" for i in range(80))
    Path("old.txt").write_text(old_text)
    Path("new.txt").write_text(new_text)
    extra = CORPUS if kind == "corpus" else []
    work = tmp_path / "work"
    out = work / "out"

    def prepare(src: str, dest: Path) -> dict[str, bytes]:
        assert cli_main(["prepare", "text", "--input", src, "--out", str(dest), *extra]) == 0
        (dest / "notes.txt").write_text("the user's own file, kept across prepares\n")
        return snapshot(dest)

    old, new = prepare("old.txt", tmp_path / "old_ref"), prepare("new.txt", tmp_path / "new_ref")
    assert old != new
    if kind == "corpus":
        assert len(load_meta(tmp_path / "new_ref")["shards"]["train"]) > 2

    zygote = Zygote(["prepare", "text", "--input", "new.txt", "--out", str(out), *extra], exchange, tmp_path)
    seen = []
    try:
        for kill_at in range(1, 500):
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(tmp_path / "old_ref", out)  # the old data, every trial (leftovers beside it stay)
            killed = zygote.trial(kill_at)
            if not exchange:
                fileio.clean_stale(out)  # what the next run does first: puts an old directory set aside back
            now = snapshot(out)
            assert now in (old, new), f"killed before step {kill_at}: neither the old nor the new data"
            seen.append("old" if now == old else "new")
            loader = BatchLoader(out, "train", 8, 2)
            x, y = loader.get_batch()
            assert x.shape == (2, 8) and load_meta(out)["vocab_size"] > 0
            if not killed:
                break
        else:
            pytest.fail("prepare never finished")
        assert seen[0] == "old" and seen[-1] == "new" and len(seen) > 5, seen
        assert leftovers(work, "out") == []  # the finished run removed every killed run's staging
    finally:
        zygote.close()


def test_staging_of_a_live_process_is_left_alone(tmp_path):
    """Two prepares of the same directory at once: neither removes the other's staging."""
    target = tmp_path / "out"
    live = tmp_path / f".out.{os.getpid()}.abc.tmp"
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = tmp_path / f".out.{dead_pid}.xyz.tmp"
    live.mkdir()
    dead.mkdir()
    fileio.clean_stale(target)
    assert live.is_dir() and not dead.exists()


def test_temp_files_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    """`atomic_path` names its temp file `.<name>.<pid>.<random>[.ext].tmp`; the next writer removes those of
    dead processes only, never a live one's and never a user's file that merely looks alike."""
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    target = tmp_path / "loss.png"
    dead = [tmp_path / f".loss.png.{dead_pid}.k2j4_x9a.tmp", tmp_path / f".loss.png.{dead_pid}.abc.png.tmp"]
    kept = [tmp_path / f".loss.png.{os.getpid()}.live1234.tmp",  # a live process's
            tmp_path / ".loss.png.no_pid.tmp", tmp_path / f".other.png.{dead_pid}.abc.tmp",  # other names
            tmp_path / "loss.png.tmp", tmp_path / "notes.txt"]
    for p in dead + kept:
        p.write_text("x")
    with fileio.atomic_path(target) as tmp:
        assert tmp.name.startswith(f".loss.png.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"png")
    fileio.clean_stale(target)
    assert not any(p.exists() for p in dead)
    assert all(p.read_text() == "x" for p in kept) and target.read_bytes() == b"png"

"""Re-preparing into an existing data directory and being killed (SIGKILL) at any moment leaves either the
old complete data or the new complete data, loadable by `BatchLoader`, and the next run cleans up.

A warm "zygote" process imports scratchgpt once and forks one `scratchgpt prepare` per trial; in the fork,
every file-system step of the write (each shard or id file written, each fsync, link, rename, exchange,
removal) first reports itself and waits for a go-ahead. Trial k is killed with SIGKILL just before its k-th
step, for every k until a trial runs to the end, so every moment between two steps is covered (kill_util.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kill_util import FS_GATES, Zygote, leftovers, snapshot
from scratchgpt import fileio
from scratchgpt.cli import main as cli_main
from scratchgpt.data import BatchLoader, load_meta

PREPARE_GATES = [*FS_GATES, "scratchgpt.data._write_ids", "scratchgpt.corpus._ShardWriter.write",
                 "pathlib.Path.write_text"]


CORPUS = ["--workers", "1", "--txt-docs", "line", "--shard-tokens", "1000"]  # streamed into several shards


@pytest.mark.slow
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

    zygote = Zygote(["prepare", "text", "--input", "new.txt", "--out", str(out), *extra], tmp_path, PREPARE_GATES,
                    exchange, preload=("scratchgpt.data", "scratchgpt.corpus"))
    seen = []
    try:
        for kill_at in range(1, 500):
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(tmp_path / "old_ref", out)  # the old data, every trial (leftovers beside it stay)
            killed = zygote.trial(kill_at) is not None
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

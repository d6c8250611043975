"""A full, read-only or unwritable disk is one sentence naming the path and what was kept, exit status 2, no
traceback, and the previous output untouched: for `prepare` (in memory and streamed), `tokenizer train`,
`export`, `import-hf`, and the plot and metrics writers.

Three ways to fail a write: an injected ENOSPC (every writer fsyncs before it commits), a real read-only
directory (a read-only tmpfs mount as root, where chmod does not stop anyone; chmod 0o555 otherwise) and a
real full disk (a 1 MiB tmpfs, filled). The mounts need root and a system that allows them; without, those
variants skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scratchgpt import checkpoint as ckpt
from scratchgpt import fileio
from scratchgpt.cli import main as cli_main
from scratchgpt.config import Config, ModelConfig
from scratchgpt.errors import DiskError
from scratchgpt.interop.hf import export_hf
from scratchgpt.models import build_model
from scratchgpt.plots import plot_loss
from scratchgpt.tokenizers import CharTokenizer

REASONS = {"enospc": os.strerror(errno.ENOSPC), "full": os.strerror(errno.ENOSPC),
           "readonly": (os.strerror(errno.EROFS), os.strerror(errno.EACCES))}


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Path:
    """Inputs on the ordinary disk: two texts, a tiny run, and that run as a Hugging Face directory."""
    d = tmp_path_factory.mktemp("disk_inputs")
    (d / "old.txt").write_text("".join(f"old line {i}: to be or not to be\n" for i in range(60)))
    (d / "new.txt").write_text("".join(f"NEW line {i}, other words; other characters!\n" for i in range(80)))
    cfg = Config(name="r", model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=40))
    model = build_model(cfg.model)
    (d / "run").mkdir()
    ckpt.write_run_header(d / "run", cfg, CharTokenizer("\n abcdefghijklmnopqrstuvwxyz.,;:!?'-"), model.num_params())
    ckpt.save_weights(d / "run" / ckpt.MODEL, model, step=0)
    export_hf(d / "run", d / "hf")
    return d


# name -> (argv that writes the old output into base, argv that rewrites it, the target named in the error)
Command = Callable[[Path, Path], tuple[list[str], list[str], Path]]
COMMANDS: dict[str, Command] = {
    "prepare": lambda b, r: (["prepare", "text", "--input", str(r / "old.txt"), "--out", str(b / "data")],
                             ["prepare", "text", "--input", str(r / "new.txt"), "--out", str(b / "data")], b / "data"),
    "prepare-corpus": lambda b, r: (
        ["prepare", "text", "--input", str(r / "old.txt"), "--out", str(b / "data"), "--workers", "1", "--txt-docs", "line"],
        ["prepare", "text", "--input", str(r / "new.txt"), "--out", str(b / "data"), "--workers", "1", "--txt-docs", "line"], b / "data"),
    "tokenizer-train": lambda b, r: (
        ["tokenizer", "train", "--input", str(r / "old.txt"), "--vocab-size", "280", "--out", str(b / "tok")],
        ["tokenizer", "train", "--input", str(r / "new.txt"), "--vocab-size", "300", "--out", str(b / "tok")],
        b / "tok"),
    "export": lambda b, r: (["export", str(r / "run"), "--out", str(b / "hf")],
                            ["export", str(r / "run"), "--out", str(b / "hf"), "--force"], b / "hf"),
    "import-hf": lambda b, r: (["import-hf", str(r / "hf"), "--out", str(b / "run")],
                               ["import-hf", str(r / "hf"), "--out", str(b / "run"), "--force"], b / "run"),
}


def snapshot(d: Path, skip: str = "") -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != skip}


def one_error_line(capsys) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err and out.out == ""
    return lines[0]


# ---- ways to fail -------------------------------------------------------------------------------------

def _mount(path: Path, options: str) -> bool:
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def mounted(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    if not _mount(path, options):
        pytest.skip("cannot mount a tmpfs here (needs root and a system that allows it)")
    try:
        yield path
    finally:
        _umount(path)


def fill(directory: Path) -> None:
    """Write zeros until the filesystem is full."""
    with open(directory / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    assert shutil.disk_usage(directory).free < 65536


@contextlib.contextmanager
def failing(way: str, base: Path, monkeypatch) -> Iterator[None]:
    """Writes under base fail while inside (base already holds the old output)."""
    if way == "enospc":
        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", no_space)
        yield
        monkeypatch.undo()
    elif way == "full":
        fill(base)
        yield
        (base / "filler").unlink()
    elif os.geteuid() == 0:  # readonly, as root: a read-only mount is the one thing that stops us
        if subprocess.run(["mount", "-o", "remount,ro", str(base)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        yield
        subprocess.run(["mount", "-o", "remount,rw", str(base)], capture_output=True, check=True)
    else:
        dirs = [base, *[p for p in base.rglob("*") if p.is_dir()]]
        for d in dirs:
            d.chmod(0o555)
        yield
        for d in dirs:
            d.chmod(0o755)


@pytest.fixture(params=["enospc", "readonly", "full"])
def way(request):
    return request.param


@pytest.fixture
def base(way, tmp_path) -> Iterator[Path]:
    """Where the outputs go: a tmpfs for the real full and read-only disks (as root), else tmp_path."""
    if way == "full" or (way == "readonly" and os.geteuid() == 0):
        with mounted(tmp_path / "fs", "size=1m") as fs:
            yield fs
    else:
        yield tmp_path / "out"


# ---- the commands -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_refused_write_is_one_sentence_and_keeps_the_old_output(command, way, base, res, monkeypatch, capsys):
    old_argv, new_argv, target = COMMANDS[command](base, res)
    assert cli_main(old_argv) == 0
    capsys.readouterr()
    before = snapshot(base)
    with failing(way, base, monkeypatch):
        assert cli_main(new_argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: could not write '{target}': "), line
    reasons = REASONS[way] if isinstance(REASONS[way], tuple) else (REASONS[way],)
    assert any(r in line for r in reasons), line
    assert f"'{target}'" in line.split(";")[-1] and "unchanged" in line, line
    assert snapshot(base, skip="filler") == before  # the old output, byte for byte, and no temp files
    if way != "readonly":  # and the command works again once the disk does
        assert cli_main(new_argv) == 0


@pytest.mark.parametrize("command", ["prepare", "tokenizer-train"])
def test_a_parent_that_cannot_be_created_is_one_sentence(command, res, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    _, argv, target = COMMANDS[command](blocker / "sub", res)
    assert cli_main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: could not write '{target}': {os.strerror(errno.ENOTDIR)}; nothing was written")
    assert blocker.read_text() == "not a directory"


# ---- the plot and metrics writers ---------------------------------------------------------------------

def test_plot_and_metrics_writers(way, base, monkeypatch, res):
    base.mkdir(exist_ok=True)
    metrics, png = base / "metrics.jsonl", base / "loss.png"
    fileio.append_text(metrics, '{"kind": "train", "step": 1, "loss": 4.0}\n')
    plot_loss(metrics, png)
    before = snapshot(base)
    with failing(way, base, monkeypatch):
        with pytest.raises(DiskError, match=rf"^could not write '{png}': .*; the previous '{png}' is unchanged$"):
            plot_loss(metrics, png)
        if way != "enospc":  # appending does not fsync, so only a real disk refuses it (a line longer than a
            # page: a full disk may still have room in the file's last page); a part written is cut back off
            with pytest.raises(DiskError, match=rf"^could not write '{metrics}': .*; the lines already in"):
                fileio.append_text(metrics, '{"kind": "train", "note": "%s"}\n' % ("x" * 20000))
    assert snapshot(base, skip="filler") == before


def test_an_unrelated_oserror_inside_a_write_is_not_called_a_disk_error(tmp_path):
    """Reading some other file inside a writer and failing is that file's error, not the write's."""
    with pytest.raises(FileNotFoundError), fileio.atomic_dir(tmp_path / "out"):
        (tmp_path / "elsewhere" / "input.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == []

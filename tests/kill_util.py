"""SIGKILL a command before each of its file-system steps, for the kill tests (prepare, train, export).

A warm "zygote" process imports scratchgpt (and whatever else the command needs) once, optionally runs a
warm-up command (so that lazy imports and caches are paid once), and forks one run of the command per trial;
in the fork, every gated function (each rename, fsync, link, removal, exchange, or a module's own writer)
first reports itself and waits for a go-ahead. Trial k is killed with SIGKILL just before its k-th step, so
trials k = 1, 2, ... until one runs to the end cover every moment between two steps; a trial may instead be
killed just before the first step of a given name ("exchange": the moment before a directory is swapped in),
and may run another command than the zygote's own (`argv`, and `entry`: "path/to/script.py:function" for a
script's `function(argv)` instead of `scratchgpt.cli.main`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

ZYGOTE = r"""
import importlib, json, os, sys
from scratchgpt import cli, fileio

argv, exchange, preload, gates = json.loads(sys.argv[1]), sys.argv[2] == "1", json.loads(sys.argv[3]), json.loads(sys.argv[4])
warmup = json.loads(sys.argv[5])
for name in preload:
    importlib.import_module(name)
if warmup:  # run once here what every fork would otherwise do for the first time (lazy imports, font caches)
    err = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    assert cli.main(warmup) == 0
    os.dup2(err, 2)

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

def owner(path):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)

def entry_point(spec):
    if not spec:
        return cli.main
    import importlib.util
    path, name = spec.rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location("kill_entry", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["kill_entry"] = module
    module_spec.loader.exec_module(module)
    return getattr(module, name)

while (msg := line()).startswith("run"):
    run = json.loads(msg[4:]) if msg != "run" else {"argv": argv, "entry": ""}
    pid = os.fork()
    if pid == 0:
        for spec in gates:
            where, attr = spec.rsplit(".", 1)
            target = owner(where)
            setattr(target, attr, gate(spec, getattr(target, attr)))
        fileio._exchange = gate("exchange", fileio._exchange if exchange else lambda a, b: False)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(entry_point(run["entry"])(run["argv"]) or 0)
    say("pid %d" % pid)
    _, status = os.waitpid(pid, 0)
    say("exit %d" % status)
"""

# what every command's file-system steps go through (fileio's renames, exchange and removals; fsync before)
FS_GATES = ["os.fsync", "os.replace", "os.rename", "os.link", "shutil.rmtree"]


class Zygote:
    def __init__(self, argv: list[str], cwd: Path, gates: list[str], exchange: bool = True,
                 preload: tuple[str, ...] = (), warmup: list[str] | None = None):
        env = {**os.environ, "MPLBACKEND": "Agg",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, json.dumps(argv), "1" if exchange else "0",
                                      json.dumps(list(preload)), json.dumps(gates), json.dumps(warmup or [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, cwd=cwd, env=env)

    def read(self) -> str:
        out = b""
        while not out.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            assert ready, "the command stopped answering"
            c = os.read(self.proc.stdout.fileno(), 1)
            assert c, "the zygote died"
            out += c
        return out.decode().strip()

    def send(self, text: str) -> None:
        os.write(self.proc.stdin.fileno(), (text + "\n").encode())

    def trial(self, kill_at: int | str, argv: list[str] | None = None, entry: str = "") -> str | None:
        """Run the command once (or `argv`, through `entry`), SIGKILL it just before its kill_at-th step (or the
        first step named kill_at); the step it was killed before (None when it ran to the end)."""
        self.send("run" if argv is None else "run " + json.dumps({"argv": argv, "entry": entry}))
        pid = int(self.read().split()[1])
        steps = 0
        while True:
            msg = self.read()
            if msg.startswith("exit"):
                assert msg == "exit 0", f"the command failed on its own ({msg})"
                return None
            steps += 1
            if steps == kill_at or msg == f"op {kill_at}":
                os.kill(pid, signal.SIGKILL)
                assert self.read() == f"exit {signal.SIGKILL}"
                return msg.removeprefix("op ")
            self.send("go")

    def close(self) -> None:
        self.send("stop")
        self.proc.wait(timeout=60)


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))

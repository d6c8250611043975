"""Signals on a real `scratchgpt serve` process with a stream open (issue 20): the first SIGINT or SIGTERM lets the
stream finish with `data: [DONE]` and exits 128 + the signal with one line; a second one exits at once, one
line, status 130 / 143, no traceback (it was: two tracebacks, status 0, streams cut without [DONE])."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from scratchgpt import checkpoint as ckpt
from scratchgpt.config import Config, DataConfig
from scratchgpt.models import ModelConfig, build_model
from scratchgpt.tokenizers import CharTokenizer
from serve_util import free_port, wait_for

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny char model with random weights: the signals do not care what it says."""
    run = tmp_path_factory.mktemp("signals") / "run"
    run.mkdir()
    m = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=30)
    torch.manual_seed(0)
    model = build_model(m)
    ckpt.write_run_header(run, Config(name="sig", data=DataConfig(dir=""), model=m),
                          CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n"), model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=0)
    return run


class Served:
    """`scratchgpt serve` in its own process, stderr to a file; one streamed completion read in a thread."""

    def __init__(self, run: Path, tmp: Path):
        self.port, self.log = free_port(), tmp / "stderr.txt"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "scratchgpt.cli", "serve", str(run), "--port",
                                          str(self.port), "--max-tokens-cap", "100000", "--threads", "1"],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        self.events: list[str] = []
        self.ended: str | None = None  # how the stream ended: "done" or the exception's name

        def healthy() -> bool:
            assert self.proc.poll() is None, self.stderr()
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, timeout=120, what="the server to start")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stream(self, max_tokens: int) -> None:
        def read() -> None:
            body = {"prompt": "ab", "max_tokens": max_tokens, "stream": True, "temperature": 1.0}
            try:
                with httpx.stream("POST", f"http://127.0.0.1:{self.port}/v1/completions", json=body,
                                  timeout=120) as r:
                    for line in r.iter_lines():
                        if line:
                            self.events.append(line)
                self.ended = "done"
            except httpx.HTTPError as e:
                self.ended = type(e).__name__
        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: len(self.events) >= 2, timeout=60, what="the stream's first tokens")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def error_lines(text: str) -> list[str]:
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error")]


@pytest.fixture
def served(run_dir, tmp_path):
    s = Served(run_dir, tmp_path)
    yield s
    s.close()


pytestmark = pytest.mark.slow  # a server process per test (seconds to start on a busy machine)


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)],
                         ids=["int-int", "term-term"])
def test_a_second_signal_exits_at_once(served, first, second):
    served.stream(max_tokens=100_000)  # far more than it makes before the second signal
    served.proc.send_signal(first)
    wait_for(lambda: "Shutting down" in served.stderr(), timeout=30, what="the graceful shutdown to start")
    time.sleep(0.3)  # the stream is still going: the first signal lets it finish
    assert served.proc.poll() is None and served.ended is None
    served.proc.send_signal(second)
    assert served.proc.wait(30) == 128 + second
    assert error_lines(served.stderr()) == [f"error: stopped at once by a second {second.name}; the open streams "
                                            "were cut"]
    wait_for(lambda: served.ended is not None, timeout=30, what="the client to see the end")
    assert served.ended != "done" and "data: [DONE]" not in served.events


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["term"])  # SIGINT takes the same path (the first test)
def test_the_first_signal_lets_open_streams_finish(served, sig):
    served.stream(max_tokens=400)
    served.proc.send_signal(sig)
    assert served.proc.wait(120) == 128 + sig
    wait_for(lambda: served.ended is not None, timeout=30, what="the stream to end")
    assert served.ended == "done" and served.events[-1] == "data: [DONE]", served.events[-3:]
    tokens = sum(len(json.loads(e[6:])["choices"][0]["text"]) for e in served.events[:-1]
                 if '"choices"' in e and json.loads(e[6:])["choices"])
    assert tokens == 400  # finished, not cut: every requested token (one character each)
    assert error_lines(served.stderr()) == [f"error: stopped by {sig.name}; every open stream was finished"]

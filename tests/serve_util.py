"""Helpers for the serving tests: a tiny trained run directory and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import tiny_config

_RUNS: dict[Path, Path] = {}


def make_run(data_dir: Path, out: Path) -> Path:
    """A tiny model trained a few steps: weights, best weights, metrics.jsonl with evals, trainer state.
    Made once per data directory and test session (the serving tests only read it)."""
    from scratchgpt.train import train

    if data_dir not in _RUNS:
        train(tiny_config(data_dir, max_iters=6, eval_interval=3), out_dir=out, progress=False)
        _RUNS[data_dir] = out
    return _RUNS[data_dir]


def special_chain_app(limits=None):
    """An app over a chat-template char tokenizer and a bigram that walks a -> <|assistant_end|> -> b ->
    <|user_start|> -> a: greedy, half of what it says is special tokens. Returns (app, tokenizer)."""
    import torch

    from scratchgpt import chat
    from scratchgpt.models.bigram import BigramLanguageModel
    from scratchgpt.serve import ServedModel, create_app
    from scratchgpt.tokenizers import CharTokenizer

    tok = chat.chat_tokenizer(CharTokenizer.from_text("ab"))
    a, b = tok.encode("ab")
    end, user = tok.special_tokens["<|assistant_end|>"], tok.special_tokens["<|user_start|>"]
    model = BigramLanguageModel(tok.vocab_size, 16)
    with torch.no_grad():
        for x, y in ((a, end), (end, b), (b, user), (user, a)):
            model.token_embedding_table.weight[x, y] = 100.0
    return create_app(ServedModel(model.eval(), tok, name="chain"), limits), tok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, timeout: float = 20.0):
    """Serve `app` with uvicorn in a thread; yield its base URL; stop it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_for(predicate, timeout: float = 10.0, what="condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.01)


class Gate:
    """Holds a scheduler's worker between steps, so a test can line requests up (`pause` ... `resume`) or act
    mid-stream whatever the machine's speed (`pause_after`). Installed by the tests on one scheduler instance
    (wrapping its `_step`): the production class has no such hook. `gate(sched)` gives the scheduler's one."""

    def __init__(self, sched):
        self.sched = sched
        self._open = threading.Event()
        self._open.set()
        self._after: int | None = None
        step = sched._step

        def held_step():
            self._open.wait()
            step()
            after = self._after
            if after is not None and sched.tokens_out >= after:
                self._after = None
                self._open.clear()

        sched._step = held_step

    def pause(self) -> None:
        """Hold the worker before its next step."""
        self._open.clear()

    def pause_after(self, tokens: int) -> None:
        """Hold the worker once it has generated `tokens` more tokens."""
        self._after = self.sched.tokens_out + tokens

    def resume(self) -> None:
        self._after = None
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()


_GATES: dict[int, Gate] = {}


def gate(sched) -> Gate:
    if id(sched) not in _GATES or _GATES[id(sched)].sched is not sched:
        _GATES[id(sched)] = Gate(sched)
    return _GATES[id(sched)]


@contextmanager
def held_after(sched, tokens: int):
    """Make the scheduler hold once it has generated `tokens` more tokens; resume it on exit."""
    g = gate(sched)
    g.pause_after(tokens)
    try:
        yield g
    finally:
        g.resume()

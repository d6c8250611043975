"""Serving: an OpenAI-compatible completions API and a playground page (`scratchgpt serve RUN_DIR`).

Owns `serve` (the command: a run loaded through the precision policy, uvicorn until interrupted) and what a
signal does to it; the rest is its parts': `app.py` (the app and its routes), `prepare.py` (a request checked
before it is queued), `answer.py` (events to responses), `schemas.py` (wire format, limits), `scheduler.py`
(continuous batching) and `static/` (the page). Wire formats: docs/serving.md. Needs the `serve` extra
(FastAPI, uvicorn); nothing here is imported by `import scratchgpt`, and this module imports its parts only
when asked.

Signals: the first SIGINT or SIGTERM stops taking requests and lets every open stream finish (each ends with
`data: [DONE]`), then exits 128 + the signal with one line, `error: stopped by SIGTERM; ...`. A second one
(either) exits at once, with one line and status 128 + its number (130, 143), no traceback: open streams
are cut, as the user asked. The server writes nothing to disk, so nothing is lost.
"""

from __future__ import annotations

import os
import signal
import socket
from types import FrameType
from typing import Any

from ..console import echo
from ..errors import Interrupted, UserError

__all__ = ["ServeLimits", "ServedModel", "create_app", "load_served", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "load_served", "ServedModel"):
        from . import app

        return getattr(app, name)
    if name == "ServeLimits":
        from .schemas import ServeLimits

        return ServeLimits
    if name == "serve":
        return serve
    raise AttributeError(name)


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, which: str = "best", device: str = "cpu",
          dtype: str = "auto", threads: int = 0, cuda_graphs: bool = True, quantize: str = "none",
          log_level: str = "info", **limits: int) -> None:
    """Load a run directory (through the precision policy for inference, as `sample` and `eval` do) and serve
    it with uvicorn until interrupted; `limits` are `ServeLimits` fields."""
    try:
        import uvicorn

        from .app import create_app
        from .schemas import ServeLimits
    except ImportError as e:
        raise UserError(f"serving needs the serve extra ({e.name} is missing): pip install 'scratchgpt[serve]'") from None
    serve_limits = ServeLimits(**limits)
    serve_limits.check()
    try:  # a taken port is one sentence now, not a log line after the model has loaded
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"cannot listen on {host}:{port} ({why}); pass another --port or --host") from None
    app = create_app(run_dir, serve_limits, which=which, device=device, dtype=dtype, threads=threads,
                     cuda_graphs=cuda_graphs, quantize=quantize)
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"note: listening on {host}; the API has no authentication, so anyone who can reach it can use it")
    facts = app.state.served.facts
    echo(f"serving {app.state.served.name} ({facts['device']}, {facts['dtype']}) at http://{host}:{port}/ "
         f"(OpenAI-compatible API at http://{host}:{port}/v1)")
    server = _server_class(uvicorn.Server)(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    server.run()
    if server.signum is not None:
        name = signal.Signals(server.signum).name
        raise Interrupted(f"stopped by {name}; every open stream was finished", server.signum)


def _server_class(base: type) -> type:
    """uvicorn's Server, with our answer to signals (the module docstring): uvicorn's own would re-raise the
    first signal after shutdown and, on a second Ctrl-C, cut the streams with tracebacks and exit 0."""

    class Server(base):  # type: ignore[misc, valid-type]
        signum: int | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.signum is not None:  # the second: at once, one line, nothing else runs
                os.write(2, f"error: stopped at once by a second {signal.Signals(sig).name}; the open streams were "
                            "cut\n".encode())
                os._exit(128 + sig)
            self.signum = sig
            self.should_exit = True  # uvicorn: stop accepting, let open responses finish, shut down

    return Server

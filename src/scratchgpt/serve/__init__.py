"""Serving: an OpenAI-compatible completions API and a playground page (`scratchgpt serve RUN_DIR`).

Owns nothing itself; `app.py` (routes), `schemas.py` (wire format, limits), `scheduler.py` (continuous
batching) and `static/` (the page) do. Needs the `serve` extra (FastAPI, uvicorn); nothing here is imported by
`import scratchgpt`, and this module imports its parts only when asked.
"""

from __future__ import annotations

from typing import Any

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


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, limits: Any = None, which: str = "best",
          device: str = "cpu", log_level: str = "info") -> None:
    """Load a run directory and serve it with uvicorn until interrupted."""
    from ..errors import UserError

    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise UserError(f"serving needs the serve extra ({e.name} is missing): pip install 'scratchgpt[serve]'") from None
    app = create_app(run_dir, limits, which=which, device=device)
    from ..console import echo

    echo(f"serving {app.state.served.name} at http://{host}:{port}/ (API at http://{host}:{port}/v1)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)

"""The web app: an OpenAI-compatible completions API and a playground page, over one scheduler.

Owns `create_app` (FastAPI app factory), `load_served` (a run directory -> model, tokenizer and the facts the
page shows), the routes (/v1/completions, /v1/models, /health, /info, /metrics, the page at /) and turning
errors into OpenAI-style JSON. Does not own batching (`scheduler.py`), the wire format (`schemas.py`) or
sampling (`sampling.py`); the page itself is static files under `static/`.

Streaming answers are server-sent events, one `text_completion` chunk per text piece, a chunk with each
choice's finish_reason, a usage chunk when `stream_options.include_usage` asks for it, then `data: [DONE]`.
A client that goes away cancels its job, which frees its cache lanes at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..checkpoint import MODEL_BEST, STATE_JSON, load_model, read_step, weights_path
from ..errors import UserError
from ..plots import read_metrics
from ..runtime import resolve_device
from ..sampling import SamplingSettings
from .scheduler import Job, Scheduler
from .schemas import (
    APIError,
    CompletionRequest,
    ServeLimits,
    choice,
    completion,
    completion_id,
    error_body,
    now,
    sse,
)

STATIC = Path(__file__).parent / "static"
POLL_DISCONNECT_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


@dataclass
class ServedModel:
    """A loaded model and what the page shows about it; `run_dir` (optional) gives the loss curve."""

    model: nn.Module
    tokenizer: Any
    name: str = "scratchgpt"
    run_dir: Path | None = None
    facts: dict = field(default_factory=dict)


def load_served(run_dir: str | Path, which: str = "best", device: str = "cpu") -> ServedModel:
    """Load a run directory's model (best weights unless `which` is last) with its facts."""
    run = Path(run_dir)
    model, tok, cfg = load_model(run, which=which, device=resolve_device(device))
    path = weights_path(run, which)
    step = read_step(path)
    evals = {r.get("step"): r.get("val_loss") for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval"}
    val = evals.get(step)
    if val is None and (run / STATE_JSON).is_file():
        try:
            state = json.loads((run / STATE_JSON).read_text(encoding="utf-8"))
            val = state.get("best_val") if path.name == MODEL_BEST else (state.get("last_eval") or {}).get("val")
        except ValueError:
            val = None
    facts = {"checkpoint": path.name, "step": step, "val_loss": val if isinstance(val, (int, float)) else None,
             "config_name": cfg.name}
    return ServedModel(model, tok, name=run.resolve().name, run_dir=run, facts=facts)


def model_facts(served: ServedModel) -> dict:
    m, tok = served.model, served.tokenizer
    cfg = getattr(m, "config", None)
    facts = {
        "parameters": sum(p.numel() for p in m.parameters()),
        "tokenizer": getattr(tok, "kind", type(tok).__name__),
        "vocab_size": tok.vocab_size,
        "context": cfg.block_size if cfg is not None else getattr(m, "block_size", None),
        "architecture": type(m).__name__,
    }
    if cfg is not None:
        facts.update(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)
    facts.update({k: v for k, v in served.facts.items() if k not in facts})
    facts.setdefault("val_loss", None)
    return facts


def create_app(source: str | Path | ServedModel, limits: ServeLimits | None = None, *, which: str = "best",
               device: str = "cpu") -> FastAPI:
    """The app for a run directory (or an already loaded `ServedModel`). Its scheduler starts now and stops
    when the app shuts down; `app.state.scheduler` exposes it (tests read its counters)."""
    limits = limits or ServeLimits()
    limits.check()
    served = source if isinstance(source, ServedModel) else load_served(source, which, device)
    scheduler = Scheduler(served.model, served.tokenizer, limits.max_batch, limits.max_waiting).start()
    facts = model_facts(served)
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.stop()

    app = FastAPI(title="scratchgpt", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.scheduler, app.state.served, app.state.limits = scheduler, served, limits

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error_body(e.errors()), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), None, kind), status_code=e.status_code)

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "scratchgpt"}

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = scheduler.alive
        return JSONResponse({"status": "ok" if ok else "down", **scheduler.stats()}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str) -> dict:
        if model_id != served.name:
            raise APIError(404, f"the model '{model_id}' does not exist; this server serves '{served.name}'",
                           "model", code="model_not_found")
        return model_card()

    @app.get("/info")
    async def info() -> dict:
        return {"model": served.name, "facts": facts, "limits": asdict(limits)}

    @app.get("/metrics")
    async def metrics() -> dict:
        return loss_curve(served.run_dir)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts, texts, settings, n = _prepare(body, served, limits)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:  # called on the scheduler's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        job = scheduler.submit(prompts, n, settings, emit)
        if job is None:
            raise APIError(503, "the server is busy (too many requests waiting); retry shortly", None, "server_error",
                           code="overloaded")
        cid, created_at = completion_id(), now()
        echoes = [t for t in texts for _ in range(n)] if body.echo else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(job, queue, cid, created_at, served.name, echoes, include_usage)
            return EventStream(events, job, media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, queue, request, cid, created_at, served.name, echoes)

    return app


class EventStream(StreamingResponse):
    """A streaming response that watches for the client leaving while it waits for tokens and cancels the
    job then (Starlette under an ASGI 2.4 server only notices at the next write, which may be long off)."""

    def __init__(self, content, job: Job, **kwargs):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.job.cancel()  # a no-op once it has ended
            for task in (streaming, watching):
                task.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)  # a send to a gone client: OSError
            await self.body_iterator.aclose()


def validation_error_body(errors: list[dict]) -> dict:
    """OpenAI-style error from pydantic's list: the first problem, naming its field."""
    if not errors:
        return error_body("the request is not valid")
    err = errors[0]
    loc = [x for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return error_body("the request body is not valid JSON", None)
    if err.get("type") == "model_attributes_type" or not loc:
        return error_body("the request body must be a JSON object", None)
    param = str(loc[0])
    if err.get("type") == "extra_forbidden":
        return error_body(f"Unrecognized request argument supplied: {param}", param)
    msg = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "is required"
    return error_body(f"'{param}' {msg[:1].lower() + msg[1:]}", param)


def _prepare(body: CompletionRequest, served: ServedModel, limits: ServeLimits
             ) -> tuple[list[list[int]], list[str], SamplingSettings, int]:
    """Check a request against the model and the limits: token ids, prompt texts, settings, n."""
    if body.model is not None and body.model != served.name:
        raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{served.name}'", "model",
                       code="model_not_found")
    n = 1 if body.n is None else body.n
    if n > limits.max_n:
        raise APIError(400, f"'n' must be at most {limits.max_n}, got {n}", "n")
    if body.best_of is not None and body.best_of != n:
        raise APIError(400, "'best_of' is not supported by this server (only equal to n)", "best_of")
    max_tokens = limits.default_max_tokens if body.max_tokens is None else body.max_tokens
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'max_tokens' must be at most {limits.max_tokens}, got {max_tokens}", "max_tokens")
    raw = body.prompts()
    if len(raw) * n > limits.max_batch:
        raise APIError(400, f"{len(raw)} prompt(s) x n={n} is {len(raw) * n} sequences; at most {limits.max_batch} "
                            "fit in one request", "n" if len(raw) == 1 else "prompt")
    from ..generate import Engine

    engine = Engine(served.model, served.tokenizer)
    vocab = min(engine.vocab_size, served.tokenizer.vocab_size)  # ids the model knows and the tokenizer decodes
    ids, texts = [], []
    for p in raw:
        if isinstance(p, str):
            try:
                ids.append(engine.encode(p))
            except UserError as e:
                raise APIError(400, f"'prompt' cannot be tokenized: {e}", "prompt") from None
            texts.append(p)
        else:
            if min(p) < 0 or max(p) >= vocab:
                raise APIError(400, f"'prompt' token ids must be in [0, {vocab}), got {min(p)}..{max(p)}", "prompt")
            ids.append(list(p))
            texts.append(served.tokenizer.decode(list(p)))
        if len(ids[-1]) > limits.max_prompt_tokens:
            raise APIError(400, f"'prompt' has {len(ids[-1]):,} tokens; at most {limits.max_prompt_tokens:,} are "
                                "allowed", "prompt")
    try:
        settings = SamplingSettings(
            max_new_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k, top_p=1.0 if body.top_p is None else body.top_p, stop=tuple(body.stop or ()),
            seed=body.seed, **({"window": body.window} if body.window else {}))
    except UserError as e:  # the schema checks these first; this is the engine's word on anything left
        raise APIError(400, str(e)) from None
    return ids, texts, settings, n


async def _stream(job: Job, queue: asyncio.Queue, cid: str, created: int, model: str,
                  echoes: list[str] | None, include_usage: bool):
    """Server-sent events for one job; leaving early (the client went away) cancels it. Events that queued up
    while the client was being written to go out in one write (one event each still)."""
    started = set()
    try:
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            out = []
            for ev in events:
                if ev[0] in ("text", "finish"):
                    row = ev[1]
                    text = ev[2] if ev[0] == "text" else ""
                    if echoes is not None and row not in started:
                        text = echoes[row] + text
                    started.add(row)
                    reason = ev[2] if ev[0] == "finish" else None
                    out.append(sse(completion(cid, created, model, [choice(row, text, reason)], None)))
                    continue
                if ev[0] == "end" and include_usage:
                    out.append(sse(completion(cid, created, model, [], ev[1])))
                elif ev[0] == "error":
                    out.append(sse(error_body(ev[1], None, "server_error")))
                out.append(sse("[DONE]"))
                yield "".join(out)
                return
            yield "".join(out)
    finally:
        job.cancel()  # a no-op once it has ended


async def _collect(job: Job, queue: asyncio.Queue, request: Request, cid: str, created: int, model: str,
                   echoes: list[str] | None) -> JSONResponse:
    texts = list(echoes) if echoes is not None else [""] * job.width
    reasons: list[str | None] = [None] * job.width
    get: asyncio.Task | None = None
    try:
        while True:
            get = get or asyncio.ensure_future(queue.get())  # one pending get, so no event is lost to a timeout
            done, _ = await asyncio.wait({get}, timeout=POLL_DISCONNECT_S)
            if not done:
                if await request.is_disconnected():
                    return JSONResponse(error_body("the client went away", None), status_code=499)
                continue
            ev, get = get.result(), None
            if ev[0] == "text":
                texts[ev[1]] += ev[2]
            elif ev[0] == "finish":
                reasons[ev[1]] = ev[2]
            elif ev[0] == "end":
                choices = [choice(i, t, r) for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
                return JSONResponse(completion(cid, created, model, choices, ev[1]))
            else:
                return JSONResponse(error_body(ev[1], None, "server_error"), status_code=500)
    finally:
        if get is not None:
            get.cancel()
        job.cancel()


def loss_curve(run_dir: Path | None, max_points: int = 2000) -> dict:
    """The run's metrics.jsonl as arrays for the page: batch losses (thinned) and eval losses."""
    rows = read_metrics(run_dir / "metrics.jsonl") if run_dir is not None else []
    train = [[r["step"], r["loss"]] for r in rows if r.get("kind") == "train" and "loss" in r]
    if len(train) > max_points:
        stride = -(-len(train) // max_points)
        train = train[::stride]
    evals = [[r["step"], r.get("train_loss"), r.get("val_loss")] for r in rows if r.get("kind") == "eval"]
    return {"train": train, "eval": evals}

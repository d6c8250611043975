"""The web app: an OpenAI-compatible API and a playground page, over one scheduler.

Owns `create_app` (the FastAPI app: its state, middleware, error handlers and routes; the routes are
module-level functions over `request.app.state.serving`), `load_served` (a run directory -> model, tokenizer
and the facts the page shows), the routes (/v1/completions, /v1/chat/completions, /v1/models,
/v1/models/{id}, /tokenize, /detokenize, /tokenizer_info, /health, /info, /metrics, the page at /), the body-size cap, and running a checked request: queue
it, then consume its events in one place (`answer.Answer`) for a streamed or a whole answer. Does not own
checking a request (`prepare.py`), answers' shapes (`answer.py`, `schemas.py`), batching or generation
(`scheduler.py` over the engine's decode core) or sampling (`sampling.py`); the page itself is static files
under `static/`.

Streaming answers are server-sent events, one chunk per text piece (with its tokens' log-probabilities when
asked for), a chunk with each choice's finish_reason, a usage chunk when `stream_options.include_usage` asks
for it, then `data: [DONE]`. A client that goes away cancels its job, which frees its cache lanes at the
scheduler's next step. Tokenizing runs off the event loop, so /health answers while long prompts are read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.nn as nn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import runtime
from ..chat import JINJA_TEMPLATE
from ..checkpoint import MODEL_BEST, STATE_JSON, load_model, read_step, weights_path
from ..completion import Ended, Event, Failed
from ..generate import PromptError
from ..models import GPT
from ..plots import read_metrics
from ..tokenizers import Tokenizer
from .answer import Answer
from .prepare import Ask, encode_text, prepare_chat, prepare_completion, prompt_refused
from .scheduler import Job, Scheduler
from .schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ServeLimits,
    TokenizeRequest,
    _Sampling,
    error_body,
    now,
)

STATIC = Path(__file__).parent / "static"
POLL_DISCONNECT_S = 0.5  # how often a waiting non-streaming request checks that its client is still there
DROPPED_HEADER = "X-Dropped-Messages"  # chat: how many of the oldest messages were left out to fit the context


@dataclass
class ServedModel:
    """A loaded model and what the page shows about it; `run_dir` (optional) gives the loss curve."""

    model: nn.Module
    tokenizer: Tokenizer
    name: str = "scratchgpt"
    run_dir: Path | None = None
    facts: dict = field(default_factory=dict)


def load_served(run_dir: str | Path, which: str = "best", device: str = "cpu", dtype: str = "auto",
                threads: int = 0, quantize: str = "none") -> ServedModel:
    """Load a run directory's model (best weights unless `which` is last) with its facts, through the precision
    policy for inference (`runtime.setup(..., use="infer")` and `Runtime.prepare`, as `scratchgpt.load`,
    `sample` and `eval` do: the same flags give the same numbers). The optional files (metrics.jsonl,
    trainer_state.json) only add facts: damaged, they are left out."""
    run = Path(run_dir)
    rt = runtime.setup(device, dtype, threads=threads, use="infer", quantize=quantize)
    model, tok, cfg = load_model(run, which=which, device=rt.device)
    n_params = sum(p.numel() for p in model.parameters())  # before prepare: int8 and reordered weights are buffers
    model = rt.prepare(model)
    path = weights_path(run, which)
    step = read_step(path)
    evals = {r.get("step"): r.get("val_loss") for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval"}
    val = evals.get(step)
    if val is None and (run / STATE_JSON).is_file():
        try:
            state = json.loads((run / STATE_JSON).read_text(encoding="utf-8"))
            val = state.get("best_val") if path.name == MODEL_BEST else (state.get("last_eval") or {}).get("val")
        except (ValueError, OSError, AttributeError):
            val = None
    facts = {"checkpoint": path.name, "step": step, "val_loss": val if isinstance(val, (int, float)) else None,
             "config_name": cfg.name, "device": str(rt.device), "dtype": str(rt.dtype).removeprefix("torch."),
             "quantize": rt.quantize, "parameters": n_params}
    return ServedModel(model, tok, name=run.resolve().name, run_dir=run, facts=facts)


def model_facts(served: ServedModel) -> dict:
    m, tok = served.model, served.tokenizer
    facts = {
        "parameters": served.facts.get("parameters", sum(p.numel() for p in m.parameters())),
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "context": m.block_size,
        "architecture": type(m).__name__,
        "chat_template": tok.has_chat_template(),  # the page offers its chat mode when this is true
    }
    if isinstance(m, GPT):
        facts.update(n_layer=m.config.n_layer, n_head=m.config.n_head, n_embd=m.config.n_embd)
    facts.update({k: v for k, v in served.facts.items() if k not in facts})
    facts.setdefault("val_loss", None)
    return facts


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is read whole (by its
    Content-Length when it gives one, else as the bytes arrive)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps(error_body(f"the request body is larger than this server's limit of {self.max_bytes:,} "
                                     "bytes", None)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


@dataclass
class Serving:
    """What the routes serve, `app.state.serving` (tests also read `app.state.scheduler` and `.served`)."""

    served: ServedModel
    scheduler: Scheduler
    limits: ServeLimits
    facts: dict
    created: int

    @property
    def context(self) -> int:
        return self.served.model.block_size

    def model_card(self) -> dict:
        return {"id": self.served.name, "object": "model", "created": self.created, "owned_by": "scratchgpt",
                "max_model_len": self.context}

    def check_model(self, name: str | None) -> None:
        """The model a request names: this server's (its run directory's name, or a path ending in it)."""
        if name is not None and name != self.served.name and Path(name).name != self.served.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.served.name}'",
                           "model", code="model_not_found")


def create_app(source: str | Path | ServedModel, limits: ServeLimits | None = None, *, which: str = "best",
               device: str = "cpu", dtype: str = "auto", threads: int = 0, cuda_graphs: bool = True,
               quantize: str = "none") -> FastAPI:
    """The app for a run directory (loaded by `load_served`) or an already loaded `ServedModel`. Its scheduler
    starts now and stops when the app shuts down."""
    limits = limits or ServeLimits()
    limits.check()
    served = source if isinstance(source, ServedModel) else load_served(source, which, device, dtype, threads,
                                                                          quantize)
    scheduler = Scheduler(served.model, served.tokenizer, limits.max_batch, limits.max_waiting,
                          cuda_graphs=cuda_graphs).start()
    app = FastAPI(title="scratchgpt", lifespan=_lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = Serving(served, scheduler, limits, model_facts(served), now())
    app.state.scheduler, app.state.served, app.state.limits = scheduler, served, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.serving.scheduler.stop()


def _serving(request: Request) -> Serving:
    return request.app.state.serving


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse(validation_error_body(e.errors()), status_code=400)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(e.detail), None, kind), status_code=e.status_code)


# ---- routes ---------------------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    sched = _serving(request).scheduler
    ok = sched.alive
    return JSONResponse({"status": "ok" if ok else "down", **sched.stats()}, status_code=200 if ok else 503)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return {"object": "list", "data": [_serving(request).model_card()]}


@router.get("/v1/models/{model_id}")
async def one_model(model_id: str, request: Request) -> dict:
    st = _serving(request)
    st.check_model(model_id)
    return st.model_card()


@router.get("/info")
async def info(request: Request) -> dict:
    st = _serving(request)
    return {"model": st.served.name, "facts": st.facts, "limits": asdict(st.limits)}


@router.get("/metrics")
async def metrics(request: Request) -> dict:
    return loss_curve(_serving(request).served.run_dir)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict:
    """vLLM's shape, what lm-evaluation-harness's remote tokenizer reads: the end-of-text token's name (None
    when the tokenizer has none: char, word, spm), the chat template as Jinja for a run fine-tuned for chat."""
    st = _serving(request)
    tok = st.served.tokenizer
    eos = next((name for name, i in tok.special_tokens.items() if i == tok.eot_token), None)
    return {"tokenizer_class": tok.kind, "eos_token": eos, "bos_token": None, "pad_token": None,
            "model_max_length": st.context, "vocab_size": tok.vocab_size, "special_tokens": tok.special_tokens,
            "chat_template": JINJA_TEMPLATE if tok.has_chat_template() else None}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    st = _serving(request)
    st.check_model(body.model)
    ids = await run_in_threadpool(encode_text, st.served.tokenizer, body.prompt, "prompt", True)
    return {"count": len(ids), "max_model_len": st.context, "tokens": ids}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    st = _serving(request)
    st.check_model(body.model)
    if body.tokens:
        try:
            st.scheduler.core.check([body.tokens], longer=True)
        except PromptError as e:
            raise prompt_refused(e, "tokens", "") from None
    return {"prompt": await run_in_threadpool(st.served.tokenizer.decode, body.tokens)}


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _answer(request, body, prepare_completion)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _answer(request, body, prepare_chat)


# ---- running a checked request --------------------------------------------------------------------------------

async def _answer(request: Request, body: _Sampling, prepare: Callable[..., Ask]) -> Response:
    """Check a request completely (`prepare`, off the event loop: tokenizing is CPU work), queue it and answer
    it, a whole response or a stream of server-sent events: either way one `Answer` consumes the job's events."""
    st = _serving(request)
    st.check_model(body.model)
    ask = await run_in_threadpool(prepare, body, st.served.tokenizer, st.scheduler.core, st.limits)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # called on the scheduler's thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    job = st.scheduler.submit(ask.prompts, ask.n, ask.settings, emit, logprobs=ask.logprobs,
                              echo_logprobs=ask.echo_logprobs)
    if job is None:
        raise APIError(503, "the server is busy (too many requests waiting); retry shortly", None, "server_error",
                       code="overloaded")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    answer = Answer(ask, st.served.tokenizer, st.served.name, stream=body.stream, include_usage=include_usage)
    said = {DROPPED_HEADER: str(ask.dropped)} if ask.dropped else {}  # the conversation's oldest turns left out
    if body.stream:
        return EventStream(_streamed(job, queue, answer), job, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **said})
    try:
        async for events in _events(job, queue, request):
            for ev in events:
                answer.on(ev)
    except _ClientGone:
        return JSONResponse(error_body("the client went away", None), status_code=499)
    if answer.error is not None:
        return JSONResponse(error_body(answer.error, None, "server_error"), status_code=500)
    return JSONResponse(answer.body(), headers=said)


class _ClientGone(Exception):
    pass


async def _events(job: Job, queue: asyncio.Queue, request: Request | None = None) -> AsyncIterator[list[Event]]:
    """A job's events as they come (those queued together in one list) until it has ended or failed. With
    `request`, a client that goes away raises `_ClientGone` (checked every POLL_DISCONNECT_S while waiting).
    Leaving early cancels the job."""
    get: asyncio.Task | None = None
    try:
        while True:
            get = get or asyncio.ensure_future(queue.get())  # one pending get, so no event is lost to a timeout
            done, _ = await asyncio.wait({get}, timeout=POLL_DISCONNECT_S if request is not None else None)
            if not done:
                if await request.is_disconnected():
                    raise _ClientGone
                continue
            events, get = [get.result()], None
            while not queue.empty():
                events.append(queue.get_nowait())
            yield events
            if isinstance(events[-1], (Ended, Failed)):
                return
    finally:
        if get is not None:
            get.cancel()
        job.cancel()  # a no-op once it has ended


async def _streamed(job: Job, queue: asyncio.Queue, answer: Answer) -> AsyncIterator[str]:
    """Server-sent events for one job: events that queued up while the client was being written to go out in
    one write (one event each still)."""
    async for events in _events(job, queue):
        yield "".join(chunk for ev in events for chunk in answer.on(ev))


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


def loss_curve(run_dir: Path | None, max_points: int = 2000) -> dict:
    """The run's metrics.jsonl as arrays for the page: batch losses (thinned) and eval losses. Damaged lines
    are skipped: the curve is optional."""
    rows = read_metrics(run_dir / "metrics.jsonl") if run_dir is not None else []
    train = [[r["step"], r["loss"]] for r in rows if isinstance(r, dict) and r.get("kind") == "train" and "loss" in r]
    if len(train) > max_points:
        stride = -(-len(train) // max_points)
        train = train[::stride]
    evals = [[r["step"], r.get("train_loss"), r.get("val_loss")] for r in rows
             if isinstance(r, dict) and r.get("kind") == "eval"]
    return {"train": train, "eval": evals}

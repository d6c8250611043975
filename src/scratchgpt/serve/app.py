"""The web app: an OpenAI-compatible completions API and a playground page, over one scheduler.

Owns `create_app` (FastAPI app factory), `load_served` (a run directory -> model, tokenizer and the facts the
page shows), the routes (/v1/completions, /v1/models, /tokenize, /detokenize, /health, /info, /metrics, the
page at /), checking a request completely before it is queued, the body-size cap, and turning events and
errors into OpenAI-style JSON. Does not own batching or generation (`scheduler.py` over the engine's decode
core), the wire format (`schemas.py`) or sampling (`sampling.py`); the page itself is static files under
`static/`.

Streaming answers are server-sent events, one `text_completion` chunk per text piece (with its tokens'
log-probabilities when asked for), a chunk with each choice's finish_reason, a usage chunk when
`stream_options.include_usage` asks for it, then `data: [DONE]`. A client that goes away cancels its job,
which frees its cache lanes at the scheduler's next step. Tokenizing runs off the event loop, so /health
answers while long prompts are being read.
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import parse_messages, prompt_ids
from ..chat import stop_ids as chat_stop_ids
from ..checkpoint import MODEL_BEST, STATE_JSON, load_model, read_step, weights_path
from ..errors import UserError
from ..generate import encode_prompt
from ..models import GPT
from ..plots import read_metrics
from ..runtime import resolve_device
from ..sampling import SamplingSettings
from .scheduler import Job, Scheduler
from .schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ServeLimits,
    TokenizeRequest,
    _Sampling,
    chat_choice,
    chat_delta,
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
    """Load a run directory's model (best weights unless `which` is last) with its facts. The optional
    files (metrics.jsonl, trainer_state.json) only add facts: damaged, they are left out."""
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
        except (ValueError, OSError, AttributeError):
            val = None
    facts = {"checkpoint": path.name, "step": step, "val_loss": val if isinstance(val, (int, float)) else None,
             "config_name": cfg.name}
    return ServedModel(model, tok, name=run.resolve().name, run_dir=run, facts=facts)


def model_facts(served: ServedModel) -> dict:
    m, tok = served.model, served.tokenizer
    facts = {
        "parameters": sum(p.numel() for p in m.parameters()),
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


def create_app(source: str | Path | ServedModel, limits: ServeLimits | None = None, *, which: str = "best",
               device: str = "cpu") -> FastAPI:
    """The app for a run directory (or an already loaded `ServedModel`). Its scheduler starts now and stops
    when the app shuts down; `app.state.scheduler` exposes it (tests read its counters)."""
    limits = limits or ServeLimits()
    limits.check()
    served = source if isinstance(source, ServedModel) else load_served(source, which, device)
    scheduler = Scheduler(served.model, served.tokenizer, limits.max_batch, limits.max_waiting).start()
    facts = model_facts(served)
    context = served.model.block_size
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.stop()

    app = FastAPI(title="scratchgpt", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.scheduler, app.state.served, app.state.limits = scheduler, served, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

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
        return {"id": served.name, "object": "model", "created": created, "owned_by": "scratchgpt",
                "max_model_len": context}

    def check_model(name: str | None) -> None:
        if name is not None and name != served.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{served.name}'", "model",
                           code="model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = scheduler.alive
        return JSONResponse({"status": "ok" if ok else "down", **scheduler.stats()}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str) -> dict:
        check_model(model_id)
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

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model)
        ids = await run_in_threadpool(_encode, served.tokenizer, body.prompt)
        return {"count": len(ids), "max_model_len": context, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model)
        _check_ids(body.tokens, served.tokenizer.vocab_size, "tokens")
        return {"prompt": await run_in_threadpool(served.tokenizer.decode, body.tokens)}

    async def answer(ask: _Ask, body: _Sampling, request: Request, chat: bool) -> Response:
        """Queue a checked request and answer it: a whole response, or a stream of server-sent events."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:  # called on the scheduler's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        job = scheduler.submit(ask.prompts, ask.n, ask.settings, emit, logprobs=ask.logprobs,
                               echo_logprobs=ask.echo and ask.logprobs is not None)
        if job is None:
            raise APIError(503, "the server is busy (too many requests waiting); retry shortly", None, "server_error",
                           code="overloaded")
        reply = _Reply(completion_id(chat), now(), served.name, chat)
        choices = _Choices(ask, served.tokenizer)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(job, queue, choices, reply, include_usage)
            return EventStream(events, job, media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, queue, choices, request, reply)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model)
        ask = await run_in_threadpool(_prepare, body, served, limits)  # tokenizing is CPU work: off the loop
        return await answer(ask, body, request, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model)
        ask = await run_in_threadpool(_prepare_chat, body, served, limits)
        return await answer(ask, body, request, chat=True)

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


# ---- a request, checked ---------------------------------------------------------------------------------------

@dataclass
class _Ask:
    """A completion request checked against the model and the limits: what the scheduler is given, and what
    the answer echoes."""

    prompts: list[list[int]]  # token ids as the model sees them (after truncate_prompt_tokens)
    texts: list[str]  # each prompt's text, for echo
    settings: SamplingSettings
    n: int
    echo: bool
    logprobs: int | None


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return encode_prompt(tokenizer, text)
    except UserError as e:
        raise APIError(400, f"'prompt' cannot be tokenized: {e}", "prompt") from None


def _check_ids(ids: list[int], vocab: int, param: str) -> None:
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        raise APIError(400, f"'{param}' token ids must be in [0, {vocab}), got {min(ids)}..{max(ids)}", param)


def _common(body: _Sampling, limits: ServeLimits, max_tokens: int | None, rows_per_n: int,
            stop_ids: tuple[int, ...] = ()) -> tuple[int, SamplingSettings]:
    """The checks both endpoints share (n, max tokens, stop strings, the batch) -> n and the sampling settings."""
    n = 1 if body.n is None else body.n
    if n > limits.max_n:
        raise APIError(400, f"'n' must be at most {limits.max_n}, got {n}", "n")
    max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'max_tokens' must be at most {limits.max_tokens}, got {max_tokens}", "max_tokens")
    if len(body.stop or ()) > limits.max_stop:
        raise APIError(400, f"'stop' must hold at most {limits.max_stop} stop strings, got {len(body.stop)}", "stop")
    if rows_per_n * n > limits.max_batch:
        raise APIError(400, f"{rows_per_n} prompt(s) x n={n} is {rows_per_n * n} sequences; at most "
                            f"{limits.max_batch} fit in one request", "n" if rows_per_n == 1 else "prompt")
    try:
        settings = SamplingSettings(
            max_new_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k, top_p=1.0 if body.top_p is None else body.top_p, stop=tuple(body.stop or ()),
            seed=body.seed, ignore_eos=body.ignore_eos, stop_token_ids=stop_ids,
            **({"window": body.window} if body.window else {}))
    except UserError as e:  # the schema checks these first; this is the engine's word on anything left
        raise APIError(400, str(e)) from None
    return n, settings


def _too_long(length: int, context: int, param: str, hint: str) -> APIError:
    return APIError(400, f"this model's context length is {context} tokens, but the {param} has {length:,}; "
                         f"{hint}", param, code="context_length_exceeded")


def _prepare(body: CompletionRequest, served: ServedModel, limits: ServeLimits) -> _Ask:
    """Check a completion request completely against the model and the limits (runs in a worker thread)."""
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise APIError(400, "'best_of' is not supported by this server (only equal to n)", "best_of")
    raw = body.prompts()
    n, settings = _common(body, limits, body.max_tokens, len(raw))
    tok, context = served.tokenizer, served.model.block_size
    vocab = min(served.model.vocab_size, tok.vocab_size)  # ids the model knows and the tokenizer decodes
    keep = body.truncate_prompt_tokens
    if keep is not None and keep > context:
        raise APIError(400, f"'truncate_prompt_tokens' must be at most the context length, {context}, got {keep}",
                       "truncate_prompt_tokens")
    hint = "shorten it or pass truncate_prompt_tokens to keep its end"
    ids, texts = [], []
    for p in raw:
        if isinstance(p, str) and keep is None and (fewest := tok.fewest_tokens(p)) > context:
            # refused before it is tokenized: a megabytes-long prompt costs nothing (the interpreter lock
            # tokenizing would hold is what keeps /health and the streams answering)
            raise _too_long(fewest, context, "prompt", hint)
        p_ids = _encode(tok, p) if isinstance(p, str) else list(p)
        if len(p_ids) > limits.max_prompt_tokens:
            raise APIError(400, f"'prompt' has {len(p_ids):,} tokens; at most {limits.max_prompt_tokens:,} are "
                                "allowed", "prompt")
        if len(p_ids) > context and keep is None:
            raise _too_long(len(p_ids), context, "prompt", hint)
        _check_ids(p_ids, vocab, "prompt")  # every id, after the cheap length checks
        cut = keep is not None and len(p_ids) > keep
        if cut:
            p_ids = p_ids[-keep:]  # left truncation, as vLLM does: the model sees the prompt's end
        ids.append(p_ids)
        texts.append(p if isinstance(p, str) and not cut else tok.decode(p_ids))
    return _Ask(ids, texts, settings, n, body.echo, body.logprobs)


def _prepare_chat(body: ChatCompletionRequest, served: ServedModel, limits: ServeLimits) -> _Ask:
    """Check a chat request: the model must have the chat template; the conversation is rendered with it and
    must fit the context; the reply ends at <|assistant_end|>."""
    tok, context = served.tokenizer, served.model.block_size
    try:
        tok.require_chat_template()
        messages = parse_messages(body.messages, "'messages'")
        ids = [prompt_ids(tok, messages)]
    except UserError as e:
        raise APIError(400, str(e), "messages") from None
    if len(ids[0]) > limits.max_prompt_tokens:
        raise APIError(400, f"'messages' are {len(ids[0]):,} tokens; at most {limits.max_prompt_tokens:,} are "
                            "allowed", "messages")
    if len(ids[0]) > context:
        raise _too_long(len(ids[0]), context, "messages", "shorten the conversation")
    n, settings = _common(body, limits, body.limit(), 1, tuple(sorted(chat_stop_ids(tok))))
    return _Ask(ids, [""], settings, n, False, None)


# ---- events to choices ----------------------------------------------------------------------------------------

def _empty_lists() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


class _Choices:
    """Builds each choice's text and OpenAI-shaped logprobs (`tokens`, `token_logprobs`, `top_logprobs`,
    `text_offset`) from the scheduler's events. With echo the text starts with the prompt and, with logprobs,
    so do the lists (the first prompt token has no log-probability: null). A token's string is what the
    tokenizer decodes it to alone; `text_offset` counts characters of the choice's text, and the chosen token
    is always among its `top_logprobs` (as vLLM does)."""

    def __init__(self, ask: _Ask, tokenizer):
        self.ask, self.tok = ask, tokenizer
        width = len(ask.prompts) * ask.n
        self.texts = [""] * width
        self.reasons: list[str | None] = [None] * width
        self.lists = [_empty_lists() for _ in range(width)] if ask.logprobs is not None else [None] * width
        self.prompt_lists: dict[int, dict] = {}  # prompt -> its tokens' lists (echo with logprobs)
        self.started = [False] * width

    def _entries(self, entries: list, offset: int) -> dict:
        out = _empty_lists()
        for tok, lp, top in entries:
            piece = self.tok.decode([tok])
            out["tokens"].append(piece)
            out["token_logprobs"].append(lp)
            if top is None:  # the first prompt token: nothing predicted it
                out["top_logprobs"].append(None)
            else:
                tops = {self.tok.decode([i]): v for i, v in top}
                tops.setdefault(piece, lp)
                out["top_logprobs"].append(tops)
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def on_prompt(self, p: int, ids: list[int], logprobs: list, tops: list) -> None:
        self.prompt_lists[p] = self._entries(list(zip(ids, logprobs, tops, strict=True)), 0)

    def on_text(self, row: int, piece: str, entries: list) -> tuple[str, dict | None]:
        """Add a piece (the echo first, on a row's first event) and its tokens; return what this adds."""
        text, added = piece, None
        if self.ask.echo and not self.started[row]:
            text = self.ask.texts[row // self.ask.n] + piece
            if self.ask.logprobs is not None:
                added = self.prompt_lists.get(row // self.ask.n, _empty_lists())
        self.started[row] = True
        if self.ask.logprobs is not None:
            before = len(self.texts[row]) + (len(text) - len(piece))  # the echo, when it comes now, goes first
            more = self._entries(entries, before)
            added = more if added is None else {k: added[k] + more[k] for k in added}
            for k in added:
                self.lists[row][k] += added[k]
        self.texts[row] += text
        return text, added

    def whole(self) -> list[dict]:
        """The choices of a whole (non-streamed) answer."""
        return [choice(i, t, r, lp) for i, (t, r, lp) in enumerate(zip(self.texts, self.reasons, self.lists,
                                                                       strict=True))]


@dataclass(frozen=True)
class _Reply:
    """Who answers: the response id, time and model, and whether in chat's shape or completions'."""

    id: str
    created: int
    model: str
    chat: bool

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        return sse(completion(self.id, self.created, self.model, choices, usage,
                              "chat.completion.chunk" if self.chat else "text_completion"))

    def whole(self, choices: _Choices, usage: dict) -> dict:
        if self.chat:
            body = [chat_choice(i, t, r) for i, (t, r) in enumerate(zip(choices.texts, choices.reasons, strict=True))]
            return completion(self.id, self.created, self.model, body, usage, "chat.completion")
        return completion(self.id, self.created, self.model, choices.whole(), usage)


async def _stream(job: Job, queue: asyncio.Queue, choices: _Choices, reply: _Reply, include_usage: bool):
    """Server-sent events for one job; leaving early (the client went away) cancels it. Events that queued up
    while the client was being written to go out in one write (one event each still). Chat chunks carry
    `delta`s: the role first, then the content, then an empty delta with the finish reason."""
    try:
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            out = []
            for ev in events:
                if ev[0] == "prompt":
                    choices.on_prompt(*ev[1:])
                    continue
                if ev[0] in ("text", "finish"):
                    row = ev[1]
                    first = not choices.started[row]
                    text, lists = choices.on_text(row, *ev[2:]) if ev[0] == "text" else choices.on_text(row, "", [])
                    reason = ev[2] if ev[0] == "finish" else None
                    if not reply.chat:
                        out.append(reply.chunk([choice(row, text, reason, lists)]))
                        continue
                    if first:
                        out.append(reply.chunk([chat_delta(row, {"role": "assistant", "content": ""}, None)]))
                    if text:
                        out.append(reply.chunk([chat_delta(row, {"content": text}, None)]))
                    if reason:
                        out.append(reply.chunk([chat_delta(row, {}, reason)]))
                    continue
                if ev[0] == "end" and include_usage:
                    out.append(reply.chunk([], ev[1]))
                elif ev[0] == "error":
                    out.append(sse(error_body(ev[1], None, "server_error")))
                out.append(sse("[DONE]"))
                yield "".join(out)
                return
            yield "".join(out)
    finally:
        job.cancel()  # a no-op once it has ended


async def _collect(job: Job, queue: asyncio.Queue, choices: _Choices, request: Request,
                   reply: _Reply) -> JSONResponse:
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
            if ev[0] == "prompt":
                choices.on_prompt(*ev[1:])
            elif ev[0] == "text":
                choices.on_text(ev[1], ev[2], ev[3])
            elif ev[0] == "finish":
                choices.on_text(ev[1], "", [])
                choices.reasons[ev[1]] = ev[2]
            elif ev[0] == "end":
                return JSONResponse(reply.whole(choices, ev[1]))
            else:
                return JSONResponse(error_body(ev[1], None, "server_error"), status_code=500)
    finally:
        if get is not None:
            get.cancel()
        job.cancel()


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

"""The wire format: OpenAI-style completion requests, responses, chunks and errors, and the server's limits.

Owns `CompletionRequest` / `ChatCompletionRequest` (pydantic, OpenAI's field names and types; a bad field is
a 400 naming it), `TokenizeRequest` / `DetokenizeRequest` (vLLM's /tokenize and /detokenize), `ServeLimits`
(the caps a deployment sets), `APIError` and the small builders of response bodies and server-sent events.
The ranges of the sampling settings are not repeated here: `SamplingSettings` checks them once and the app
names the field (`prepare.py`). Does not own routing, the model, or how text is generated (`app.py`,
`scheduler.py`).

`logprobs` (0 to 5, OpenAI's range) gives each token's log-probability and its most likely alternatives;
with `echo` the prompt's tokens too (the first has none), which with `max_tokens` 0 is how evaluation
harnesses score a text. Fields that OpenAI defines but this server cannot honour (suffix, penalties,
logit_bias, best_of other than n) are refused by name rather than silently ignored; an unknown field is
refused like OpenAI does. Extensions, as vLLM spells them: `top_k`, `ignore_eos` (go on past
<|endoftext|>), `skip_special_tokens` (false shows special tokens as text), `truncate_prompt_tokens` (keep a
prompt's last k tokens instead of refusing one longer than the context); and `window` (the engine's sliding
policy past the block: full | half). The `openai` client sends extensions through `extra_body`. Chat takes
`logprobs` (true) and `top_logprobs` (0 to 20) as OpenAI does.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from ..errors import UserError

MAX_LOGPROBS = 5  # OpenAI's limit on completions' logprobs
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on chat's top_logprobs


@dataclass(frozen=True)
class ServeLimits:
    """Caps on what one request may ask for; requests beyond them get a 400 naming the field."""

    max_prompt_tokens: int = 4096  # per prompt, after tokenizing, before any truncate_prompt_tokens
    max_tokens: int = 1024  # cap on max_tokens
    max_n: int = 8  # cap on n (and prompts x n must fit in max_batch)
    max_batch: int = 32  # cache lanes: rows decoded together; one request's prompts x n must fit
    max_waiting: int = 256  # requests queued beyond the batch before new ones get a 503
    default_max_tokens: int = 16  # OpenAI's default when max_tokens is left out
    max_stop: int = 16  # stop strings per request (OpenAI allows 4; harnesses add <|endoftext|> to a task's own)
    max_body_bytes: int = 4 * 2**20  # a larger request body is answered 413 before it is read whole

    def check(self) -> None:
        for name in ("max_prompt_tokens", "max_tokens", "max_n", "max_batch", "max_waiting", "default_max_tokens",
                     "max_stop", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_tokens" else 1):
                raise UserError(f"serve limit {name} must be a positive whole number, got {value!r}")


class APIError(Exception):
    """An error answered as OpenAI does: HTTP status and {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return error_body(self.message, self.param, self.type, self.code)


def error_body(message: str, param: str | None = None, type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


Number = Annotated[float, Field(allow_inf_nan=False)]


class _Sampling(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share: the model, sampling and streaming."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = None
    temperature: Annotated[Number, Field(le=2)] | None = None  # OpenAI's bound; the rest is SamplingSettings'
    top_p: Number | None = None
    top_k: StrictInt | None = None
    window: StrictStr | None = None  # past the block: the engine's sliding policy (full | half)
    n: Annotated[StrictInt, Field(ge=1)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True  # vLLM's name: false shows special tokens as text
    # OpenAI fields this server does not implement: accepted only at their "off" values
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Number] | None = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        return None if v == -1 else v  # -1: off, as vLLM spells it

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        return [] if v is None else [v] if isinstance(v, str) else v  # how many: the server's max_stop

    @field_validator("logit_bias", "suffix", check_fields=False)  # suffix: completions only
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v:
            raise ValueError("is not supported by this server")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None) -> float | None:
        if v:
            raise ValueError("is not supported by this server (only 0)")
        return v


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt` is a string, a list of strings, token ids, or a list of token-id lists."""

    prompt: Any = ""
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    truncate_prompt_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    suffix: StrictStr | None = None  # not supported: accepted only empty
    best_of: StrictInt | None = None  # only equal to n

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        def ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

        ok = (isinstance(v, str)
              or (isinstance(v, list) and bool(v) and (all(isinstance(p, str) for p in v) or ids(v)
                                                       or all(ids(p) for p in v))))
        if not ok:
            raise ValueError("must be a string, a non-empty list of strings, a non-empty list of token ids, "
                             "or a non-empty list of non-empty lists of token ids")
        return v

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a list: strings, or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [p]
        return list(p)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: `messages` as OpenAI shapes them (content a string, or text parts); the
    model answers through its chat template. `max_completion_tokens` is the newer name of `max_tokens`."""

    messages: Any
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False  # each reply token's log-probability (choices[].logprobs.content[])
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None  # and this many alternatives

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, v: Any) -> Any:
        """Text content parts ([{"type": "text", "text": ...}]) joined into one string; the rest is checked
        against the template (roles, order) when the request is prepared."""
        if isinstance(v, list):
            out = []
            for m in v:
                if isinstance(m, dict) and isinstance(m.get("content"), list):
                    parts = m["content"]
                    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                               for p in parts):
                        raise ValueError("content parts must all be {\"type\": \"text\", \"text\": ...}")
                    m = {**m, "content": "".join(p["text"] for p in parts)}
                out.append(m)
            return out
        return v

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_asked(self) -> int | None:
        """Alternatives per reply token when `logprobs` is true (top_logprobs, default 0), else None."""
        if not self.logprobs:
            if self.top_logprobs:
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
            return None
        return self.top_logprobs or 0


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape): the ids the server's tokenizer gives a text, special tokens' names
    recognised (as vLLM's Hugging Face tokenizers do; a completion's text prompt never is)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    prompt: StrictStr
    add_special_tokens: StrictBool = True  # accepted for vLLM clients; the tokenizers here add no BOS


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's shape): the text of token ids."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    tokens: list[StrictInt]


# ---- responses ------------------------------------------------------------------------------------------

def completion_id(chat: bool = False) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(cid: str, created: int, model: str, choices: list[dict], usage: dict | None,
               kind: str = "text_completion") -> dict:
    """A response body or stream chunk; `kind` is text_completion, chat.completion or chat.completion.chunk."""
    body = {"id": cid, "object": kind, "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def chat_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish_reason}


def chat_delta(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def sse(data: dict | str) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


def now() -> int:
    return int(time.time())

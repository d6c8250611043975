"""Answers: one job's events (`completion.Event`) -> an OpenAI-shaped response, whole or streamed.

Owns `Answer`, the one consumer of a job's events: `on(event)` folds each event into the choices (text, finish
reasons, log-probabilities, usage, an error) and returns the server-sent events a streamed answer writes for
it; a whole answer is `body()` once the job has ended. Completions carry `logprobs` as `tokens`,
`token_logprobs`, `top_logprobs` and `text_offset` (with echo, the prompt's first: its first token has none);
chat carries `logprobs.content[]` entries of `token`, `logprob`, `bytes` and `top_logprobs`. A token's string
is what the tokenizer decodes it to alone; `text_offset` counts characters of the choice's text (a hidden
special token advances it by nothing), and a completion's chosen token is always among its `top_logprobs`
(as vLLM does). Does not own HTTP (`app.py`) or the wire format's builders (`schemas.py`).
"""

from __future__ import annotations

from ..completion import Ended, Event, Failed, Finished, PromptLogprobs, TextPiece, TokenLogprob, Usage
from ..tokenizers import Tokenizer
from .prepare import Ask
from .schemas import chat_choice, chat_delta, choice, completion, completion_id, error_body, now, sse


def _empty_lists() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


class Answer:
    """Builds one request's answer from its events; `stream` says whether `on` returns the SSE to write."""

    def __init__(self, ask: Ask, tokenizer: Tokenizer, model: str, *, stream: bool = False,
                 include_usage: bool = False):
        self.ask, self.tok, self.model = ask, tokenizer, model
        self.stream, self.include_usage = stream, include_usage
        self.id, self.created = completion_id(ask.chat), now()
        width = len(ask.prompts) * ask.n
        self.texts = [""] * width
        self.reasons: list[str | None] = [None] * width
        self.logprobs: list[dict | None] = [self._no_lists() for _ in range(width)]
        self.prompt_lists: dict[int, dict] = {}  # prompt -> its tokens' lists (echo with logprobs)
        self.started = [False] * width
        self.usage: Usage | None = None
        self.error: str | None = None
        self._hidden = tokenizer.special_ids if ask.settings.skip_special_tokens else frozenset()

    @property
    def over(self) -> bool:
        return self.usage is not None or self.error is not None

    def on(self, ev: Event) -> list[str]:
        """Fold one event in; return the server-sent events it makes (none unless streaming)."""
        if isinstance(ev, PromptLogprobs):
            self.prompt_lists[ev.prompt] = self._lists(ev.entries, 0)
            return []
        if isinstance(ev, TextPiece):
            return self._row(ev.row, ev.text, ev.entries, None)
        if isinstance(ev, Finished):
            return self._row(ev.row, "", (), ev.reason)
        if isinstance(ev, Ended):
            self.usage = ev.usage
            if not self.stream:
                return []
            return ([self._chunk([], ev.usage.as_dict())] if self.include_usage else []) + [sse("[DONE]")]
        if isinstance(ev, Failed):
            self.error = ev.message
            return [sse(error_body(ev.message, None, "server_error")), sse("[DONE]")] if self.stream else []
        raise TypeError(f"not an event: {ev!r}")

    def body(self) -> dict:
        """The whole answer (after `Ended`)."""
        usage = self.usage.as_dict() if self.usage is not None else None
        if self.ask.chat:
            choices = [chat_choice(i, t, r, lp) for i, (t, r, lp) in
                       enumerate(zip(self.texts, self.reasons, self.logprobs, strict=True))]
            return completion(self.id, self.created, self.model, choices, usage, "chat.completion")
        choices = [choice(i, t, r, lp) for i, (t, r, lp) in
                   enumerate(zip(self.texts, self.reasons, self.logprobs, strict=True))]
        return completion(self.id, self.created, self.model, choices, usage)

    # ---- one row's piece --------------------------------------------------------------------------------

    def _row(self, row: int, piece: str, entries: tuple[TokenLogprob, ...], reason: str | None) -> list[str]:
        """Add a piece (the echo first, on a row's first event) and its tokens; the chunks this makes."""
        first, self.started[row] = not self.started[row], True
        text, added = piece, None
        if self.ask.echo and first:
            text = self.ask.texts[row // self.ask.n] + piece
            if self.ask.logprobs is not None:
                added = self.prompt_lists.get(row // self.ask.n, _empty_lists())
        lists = self.logprobs[row]
        if lists is not None:
            if self.ask.chat:
                added = {"content": [self._content(e) for e in entries]}
            else:
                more = self._lists(entries, len(self.texts[row]) + len(text) - len(piece))  # after the echo
                added = more if added is None else {k: added[k] + more[k] for k in added}
            for k in added:
                lists[k] += added[k]
        self.texts[row] += text
        if reason is not None:
            self.reasons[row] = reason
        if not self.stream:
            return []
        if not self.ask.chat:
            return [self._chunk([choice(row, text, reason, added)])]
        out = [self._chunk([chat_delta(row, {"role": "assistant", "content": ""}, None)])] if first else []
        if text or (added and added["content"]):
            out.append(self._chunk([chat_delta(row, {"content": text}, None, added)]))
        if reason is not None:
            out.append(self._chunk([chat_delta(row, {}, reason)]))
        return out

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        kind = "chat.completion.chunk" if self.ask.chat else "text_completion"
        return sse(completion(self.id, self.created, self.model, choices, usage, kind))

    # ---- log-probabilities -----------------------------------------------------------------------------

    def _no_lists(self) -> dict | None:
        if self.ask.logprobs is None:
            return None
        return {"content": []} if self.ask.chat else _empty_lists()

    def _lists(self, entries: tuple[TokenLogprob, ...], offset: int) -> dict:
        """Completions' shape for `entries`, the first at character `offset` of the choice's text."""
        out = _empty_lists()
        for e in entries:
            piece = self.tok.decode([e.token])
            out["tokens"].append(piece)
            out["token_logprobs"].append(e.logprob)
            if e.top is None:  # the first prompt token: nothing predicted it
                out["top_logprobs"].append(None)
            else:
                tops = {self.tok.decode([i]): v for i, v in e.top}
                tops.setdefault(piece, e.logprob)
                out["top_logprobs"].append(tops)
            out["text_offset"].append(offset)
            offset += 0 if e.token in self._hidden else len(piece)
        return out

    def _content(self, e: TokenLogprob) -> dict:
        """Chat's shape for one token: its string, log-probability, UTF-8 bytes and the alternatives."""
        return {**self._token(e.token, e.logprob),
                "top_logprobs": [self._token(i, v) for i, v in e.top or ()]}

    def _token(self, token: int, logprob: float | None) -> dict:
        raw = self.tok.decode_bytes([token])
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

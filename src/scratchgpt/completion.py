"""One request's lifecycle, the same for `Engine` (sample, the Python API, the REPL, chat) and the server.

Owns `Completion` (a request's rows: prompts x n samples, prompt-major) and `RowOutput` (one row: its text
stream, log-probabilities not yet sent, tokens counted, finish reason), and the typed events they produce:
`PromptLogprobs` (a prompt's own tokens scored, for echo), `TextPiece` (text that is final, with the tokens
it came from), `Finished` (a row's finish reason), `Ended` (the usage, last) and `Failed` (an error instead).
A caller feeds each step's sampled tokens to `Completion.step` and gets the events back; `close` ends what is
left. So text assembly (whole characters, stop strings, special tokens hidden), the end-of-text rule, usage
counts and finish reasons are decided here once. Does not own sampling, the model or the decode loop
(`generate.py`), queueing (`serve/scheduler.py`) or wire formats (`serve/`).

Rules. A row ends at a stop id (the end-of-text rule, `sampling.stop_token_ids`) or a stop string: reason
"stop"; or when the request's `max_new_tokens` steps have run: reason "length". Every sampled token counts in
the usage, a stop id included; its log-probability is sent only for tokens that are part of the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import SamplingSettings, TextStream, stop_token_ids
from .tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenLogprob:
    """A token, the model's log-probability of it (None for a prompt's first token: nothing predicted it) and
    the most likely alternatives as (id, log-probability), most likely first (None with the first token)."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # each prompt counted once, whatever n
    completion_tokens: int  # every sampled token of every row

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


# ---- events ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptLogprobs:
    """Prompt `prompt`'s tokens, each with its log-probability given the ones before it (echo)."""

    prompt: int
    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextPiece:
    """Text of row `row` that is final now, and the sampled tokens it came from (with log-probabilities when
    they were asked for; a piece may carry tokens and no text, e.g. half a character)."""

    row: int
    text: str
    entries: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    row: int
    reason: str  # "stop" | "length"


@dataclass(frozen=True)
class Ended:
    """The request is over; always the last event of a request that did not fail."""

    usage: Usage


@dataclass(frozen=True)
class Failed:
    """The request failed (the others go on); the last event of that request."""

    message: str


Event = PromptLogprobs | TextPiece | Finished | Ended | Failed


# ---- rows -----------------------------------------------------------------------------------------------------

class RowOutput:
    """One row: sampled tokens in, events out. Without a tokenizer it only counts tokens and watches stop ids."""

    def __init__(self, index: int, tokenizer: Tokenizer | None, settings: SamplingSettings, prompt: list[int],
                 stop_ids: frozenset[int], hidden: frozenset[int]):
        """`hidden`: the special ids the text leaves out (`Completion` works them out once for all rows)."""
        self.index, self.stop_ids = index, stop_ids
        self.stream = (TextStream(tokenizer, settings.stop, prompt, stop_ids, hidden=hidden)
                       if tokenizer is not None else None)
        self.tokens = 0  # sampled until the row finished
        self.entries: list[TokenLogprob] = []  # log-probabilities not yet sent with a piece
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.reason is not None

    def push(self, token: int, entry: TokenLogprob | None = None) -> list[Event]:
        if self.done:
            return []  # a finished row still feeds its lane until its request leaves
        self.tokens += 1
        if entry is not None and token not in self.stop_ids:
            self.entries.append(entry)
        if self.stream is None:
            return self._finish("stop") if token in self.stop_ids else []
        piece = self.stream.push(token)
        return self._piece(piece) + (self._finish("stop") if self.stream.done else [])

    def close(self, reason: str) -> list[Event]:
        """No more tokens: what the stream held back, then the finish reason."""
        if self.done:
            return []
        return self._piece(self.stream.finish() if self.stream is not None else "") + self._finish(reason)

    def _piece(self, text: str) -> list[Event]:
        if not text and not self.entries:
            return []
        entries, self.entries = tuple(self.entries), []
        return [TextPiece(self.index, text, entries)]

    def _finish(self, reason: str) -> list[Event]:
        self.reason = reason
        return [Finished(self.index, reason)]


class Completion:
    """A request's rows: `n` samples of each prompt (token ids), prompt-major. `text` False: the rows only
    count tokens and end at stop ids (the token-level `Engine.token_steps`)."""

    def __init__(self, prompts: list[list[int]], n: int, settings: SamplingSettings, tokenizer: Tokenizer | None,
                 *, text: bool = True):
        self.settings, self.steps = settings, 0
        stop = stop_token_ids(tokenizer, settings)
        writer = tokenizer if text else None  # text=False: token ids only (stop ids still end rows)
        hidden = (frozenset(writer.special_ids - stop) if writer is not None and settings.skip_special_tokens
                  else frozenset())
        self.rows = [RowOutput(r, writer, settings, prompts[r // n], stop, hidden)
                     for r in range(len(prompts) * n)]
        self.prompt_tokens = sum(len(p) for p in prompts)

    @property
    def done(self) -> bool:
        return all(row.done for row in self.rows)

    def step(self, tokens: list[int], logprobs: list[float] | None = None,
             tops: list[tuple[tuple[int, float], ...]] | None = None) -> list[Event]:
        """One sampled token per row (and their log-probabilities); the events they make. After the request's
        `max_new_tokens` steps every row still going ends with "length"."""
        self.steps += 1
        events: list[Event] = []
        for r, (row, tok) in enumerate(zip(self.rows, tokens, strict=True)):
            entry = TokenLogprob(tok, logprobs[r], tops[r]) if logprobs is not None and tops is not None else None
            events += row.push(tok, entry)
        if self.steps >= self.settings.max_new_tokens:
            events += self.close()
        return events

    def close(self, reason: str = "length") -> list[Event]:
        """End every row still going (the steps ran out, or the caller stopped early)."""
        return [ev for row in self.rows for ev in row.close(reason)]

    @property
    def completion_tokens(self) -> int:
        return sum(row.tokens for row in self.rows)

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)


__all__ = ["Completion", "Ended", "Event", "Failed", "Finished", "PromptLogprobs", "RowOutput", "TextPiece",
           "TokenLogprob", "Usage"]

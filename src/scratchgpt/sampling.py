"""Sampling policy and text assembly for the generation engine.

Owns `SamplingSettings` (temperature, top-k, top-p, stop strings, max new tokens, seed, window, ignore_eos,
whether special tokens show as text; validated once, here, into one `SettingError` sentence each that names
the setting, so the server's 400 names its field), `stop_token_ids` (the end-of-text rule),
`sample_next` (logits -> token ids, greedy at temperature 0), `token_logprobs` (the model's log-probabilities
of chosen tokens and the most likely ones) and `TextStream` (token ids -> text pieces that are safe to show:
complete characters only, stop strings cut off and never emitted, a stop id ends the text, special tokens
hidden). Does not own the model, the cache or the loop that drives them (`generate.py`), nor a request's rows
(`completion.py`).

Random numbers are drawn the same way whatever produced the logits: one exponential variate per vocabulary
entry per row per step, and the token is argmax(p / q) (the exponential-race form of sampling from p, the
one `torch.multinomial` uses). So the cached engine and the uncached reference, given the same seed and the
same logits shape, draw the same numbers and pick the same tokens; and nothing here syncs with the host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .errors import UserError, closest
from .limits import MAX_NEW_TOKENS_CAP, UINT64_MAX
from .tokenizers import Tokenizer

MAX_STOP_LEN = 1_000
_HOLD_INCOMPLETE = 4  # tokens held back at most while the decoded text ends in U+FFFD (a UTF-8 char is <= 4 bytes)


WINDOWS = ("full", "half")


class SettingError(UserError):
    """A sampling setting out of its range: `name` is the setting, `detail` the predicate ("must be ...")."""

    LABELS = {"max_new_tokens": "max new tokens", "top_k": "top-k", "top_p": "top-p", "stop": "each stop string",
              "stop_token_ids": "stop token ids"}

    def __init__(self, name: str, detail: str):
        super().__init__(f"{self.LABELS.get(name, name)} {detail}")
        self.name, self.detail = name, detail


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens and when to stop. `top_k` None and `top_p` 1.0 disable those filters."""

    max_new_tokens: int = 500
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a fresh random seed each call
    window: str = "full"  # past the block: full (keep the last block, as the lecture) | half (slide by half-blocks)
    ignore_eos: bool = False  # go on past <|endoftext|> instead of stopping there
    stop_token_ids: tuple[int, ...] = ()  # more token ids that end the text (a chat reply's <|assistant_end|>)
    skip_special_tokens: bool = True  # special tokens (a chat template's) add no text, as OpenAI-style servers do

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string is one stop string, not a tuple of characters
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, (str, bytes)):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        self.check()

    def check(self) -> None:
        """Raise a `SettingError` naming the first bad value (the one place these ranges are checked)."""
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NEW_TOKENS_CAP:
            raise SettingError("max_new_tokens", f"must be a whole number from 0 to {MAX_NEW_TOKENS_CAP:,}, got {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or t == float("inf"):
            raise SettingError("temperature", f"must be a number of at least 0 (0 is greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise SettingError("top_k", f"must be a positive whole number (or none), got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise SettingError("top_p", f"must be in (0, 1], got {p!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_LEN:
                raise SettingError("stop", f"must be text of 1 to {MAX_STOP_LEN} characters, got {s!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed <= UINT64_MAX):
            raise SettingError("seed", f"must be a whole number from -2**63 to 2**64 - 1 (what torch takes), got {seed!r}")
        if self.window not in WINDOWS:
            raise SettingError("window", f"must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(name, f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.stop_token_ids, tuple) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.stop_token_ids):
            raise SettingError("stop_token_ids", f"must be whole numbers of at least 0, got {self.stop_token_ids!r}")

    def replace(self, **changes) -> SamplingSettings:
        return dataclasses.replace(self, **changes)


def settings_from(settings: SamplingSettings | None = None, **kwargs) -> SamplingSettings:
    """Settings from keyword arguments (unknown names are a UserError), over `settings` if given."""
    names = {f.name for f in dataclasses.fields(SamplingSettings)}
    bad = sorted(set(kwargs) - names)
    if bad:
        raise UserError(f"unknown sampling setting '{bad[0]}'{closest(bad[0], names)}")
    return (settings or SamplingSettings()).replace(**kwargs) if kwargs else (settings or SamplingSettings())


def stop_token_ids(tokenizer: Tokenizer | None, settings: SamplingSettings) -> frozenset[int]:
    """The end-of-text rule, the same for `sample`, the Python API and the server: a row ends at the
    tokenizer's <|endoftext|> (when it has one), unless the settings say `ignore_eos`, and at any of the
    settings' `stop_token_ids` (a chat reply's closing token) whatever `ignore_eos` says."""
    ids = set(settings.stop_token_ids)
    if tokenizer is not None and tokenizer.eot_token is not None and not settings.ignore_eos:
        ids.add(tokenizer.eot_token)
    return frozenset(ids)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's log-probabilities (log-softmax of raw logits, before temperature or filters) of `tokens`
    and the `top` most likely entries: logits (..., V), tokens (...) -> chosen (...), top values and ids (..., top)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (..., V)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    values, ids = logp.topk(top, dim=-1) if top > 0 else (logp[..., :0], tokens.unsqueeze(-1)[..., :0])
    return chosen, values, ids


def sample_next(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from logits (B, vocab) -> (B,) ids: argmax at temperature 0, else sampled."""
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    # Subtract each row's max first: the best token sits at exactly 0 and keeps it (0 / T is 0 for any T, and
    # the where guards a T that rounds to 0 in float32), the rest go to -inf as T -> 0, so a tiny temperature
    # tends to greedy instead of inf / inf = NaN. Softmax is shift-invariant, so nothing else changes.
    logits = logits.float()
    logits = logits - logits.amax(dim=-1, keepdim=True)  # (B, V), <= 0
    logits = torch.where(logits == 0, logits, logits / s.temperature)  # (B, V)
    if s.top_k is not None and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if s.top_p < 1.0:
        # keep the smallest set of most likely tokens whose mass reaches top_p (always at least one)
        p_sorted, order = probs.sort(dim=-1, descending=True)  # (B, V) each
        before = p_sorted.cumsum(dim=-1) - p_sorted  # mass strictly ahead of each token
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= s.top_p)
        probs = probs.masked_fill(drop, 0.0)
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)  # (B, V)
    q = q.clamp_min_(torch.finfo(q.dtype).tiny)  # a draw of exactly 0 would make 0 / 0 = NaN for p = 0
    return (probs / q).argmax(dim=-1)  # (B,): distributed as probs, no host sync


class TextStream:
    """Turns one row's token ids into text pieces as they come.

    A piece is released only when it is complete: a trailing U+FFFD (half of a multi-byte character
    split across tokens) is held back for up to a few tokens, and so is any tail that could be the start
    of a stop string. When a stop string appears, the text before it is released and the stream is done.
    Each new token is decoded after the two ids before it (`Tokenizer.decode_after`), so tokenizers whose
    pieces depend on their neighbours (leading spaces) still decode right. `hidden` ids (special tokens)
    add no text and are not used as context.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), context: list[int] | None = None,
                 stop_ids: frozenset[int] = frozenset(), hidden: frozenset[int] = frozenset()):
        self.tok = tokenizer
        self.stop = tuple(stop)
        self.stop_ids = stop_ids  # token ids that end the text (<|endoftext|>: see stop_token_ids)
        self.hidden = hidden  # token ids that add no text (special tokens, unless asked to show them)
        self.stopped = False  # a stop string or a stop id ended it (finish reason "stop", not "length")
        self.prev: list[int] = [i for i in context or () if i not in hidden][-2:]  # already-decoded ids, for context
        self.pending: list[int] = []  # ids whose text is not decoded for good yet
        self.buffer = ""  # decoded text held back for stop-string matching
        self.done = False

    def _decode_pending(self, final: bool) -> str:
        text = self.tok.decode_after(self.prev, self.pending)
        if text.endswith("\ufffd") and not final and len(self.pending) < _HOLD_INCOMPLETE:
            return ""  # wait for the rest of the character
        self.prev = (self.prev + self.pending)[-2:]
        self.pending = []
        return text

    def push(self, token: int) -> str:
        """Add one token; return the text that may be shown now ('' if none, or once done)."""
        if self.done:
            return ""
        if int(token) in self.stop_ids:  # the end of the text: what is held back is final now
            out = self.finish()
            self.stopped = True
            return out
        if int(token) in self.hidden:
            return ""
        self.pending.append(int(token))
        self.buffer += self._decode_pending(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: return whatever is left (up to a stop string, if one appears)."""
        if self.done:
            return ""
        if self.pending:
            self.buffer += self._decode_pending(final=True)
        out = self._release(final=True)
        self.done = True
        return out

    def _release(self, final: bool) -> str:
        buf = self.buffer
        hits = [i for i in (buf.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.done, self.stopped, self.buffer = True, True, ""
            return buf[: min(hits)]
        hold = 0 if final else self._stop_prefix_len(buf)
        self.buffer = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def _stop_prefix_len(self, buf: str) -> int:
        """Length of the longest tail of buf that begins some stop string (so might become one)."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if s.startswith(buf[-n:]):
                    best = n
                    break
        return best

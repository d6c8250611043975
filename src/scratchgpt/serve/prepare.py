"""A request checked completely before it is queued: OpenAI-shaped bodies -> what the scheduler is given.

Owns `Ask` (prompts as token ids, their texts for echo, the sampling settings, n, echo and log-probabilities)
and `prepare_completion` / `prepare_chat`, which check a request against the server's limits and the model,
and turn the library's typed errors into 400s naming the field: `SettingError` (the sampling settings'
ranges, checked once in `sampling.py`), `PromptError` (prompt lengths and token ids, checked once by the
decode core), `ChatError` (messages, the chat template). Both run in a worker thread (tokenizing is CPU
work). Does not own the wire format (`schemas.py`), routing (`app.py`) or answers (`answer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chat import ConversationTooLong, fit_conversation, parse_messages, reply_room
from ..chat import stop_ids as chat_stop_ids
from ..errors import UserError
from ..generate import DecodeCore, PromptError, encode_prompt, prompt_too_long
from ..sampling import SamplingSettings, SettingError
from ..tokenizers import Tokenizer
from .schemas import APIError, ChatCompletionRequest, CompletionRequest, ServeLimits, _Sampling


@dataclass
class Ask:
    """A request checked against the model and the limits: what the scheduler is given, and what the answer
    echoes."""

    prompts: list[list[int]]  # token ids as the model sees them (after truncate_prompt_tokens)
    texts: list[str]  # each prompt's text, for echo
    settings: SamplingSettings
    n: int
    echo: bool
    logprobs: int | None  # alternatives per token (completions' logprobs, chat's top_logprobs); None: none asked
    chat: bool = False
    dropped: int = 0  # chat: the oldest messages left out so the conversation fits (header X-Dropped-Messages)

    @property
    def echo_logprobs(self) -> bool:
        return self.echo and self.logprobs is not None


def encode_text(tokenizer: Tokenizer, text: str, param: str = "prompt", special: bool = False) -> list[int]:
    """A prompt's ids (an empty one starts from <|endoftext|> or a newline); `special`: /tokenize's, the text's
    ids as they are (none for an empty text) with special tokens' names recognised."""
    try:
        return tokenizer.encode_with_special_tokens(text) if special else encode_prompt(tokenizer, text)
    except UserError as e:
        raise APIError(400, f"'{param}' cannot be tokenized: {e}", param) from None


def prompt_refused(e: PromptError, param: str, hint: str) -> APIError:
    """The decode core's word on a prompt, as a 400 naming the field."""
    if e.too_long:
        return APIError(400, f"{e}; {hint}", param, code="context_length_exceeded")
    return APIError(400, f"'{param}' {e.detail}", param)


def sampling(body: _Sampling, limits: ServeLimits, max_tokens: int | None, rows_per_n: int,
             max_tokens_name: str = "max_tokens") -> tuple[int, SamplingSettings]:
    """The checks both endpoints share: the server's limits (n, max tokens, stop strings, the batch), then the
    sampling settings (their ranges are `SamplingSettings`'); -> n and the settings."""
    n = 1 if body.n is None else body.n
    if n > limits.max_n:
        raise APIError(400, f"'n' must be at most {limits.max_n}, got {n}", "n")
    max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'{max_tokens_name}' must be at most {limits.max_tokens}, got {max_tokens}",
                       max_tokens_name)
    if len(body.stop or ()) > limits.max_stop:
        raise APIError(400, f"'stop' must hold at most {limits.max_stop} stop strings, got {len(body.stop)}", "stop")
    if rows_per_n * n > limits.max_batch:
        raise APIError(400, f"{rows_per_n} prompt(s) x n={n} is {rows_per_n * n} sequences; at most "
                            f"{limits.max_batch} fit in one request", "n" if rows_per_n == 1 else "prompt")
    try:
        settings = SamplingSettings(
            max_new_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k, top_p=1.0 if body.top_p is None else body.top_p, stop=tuple(body.stop or ()),
            seed=body.seed, ignore_eos=body.ignore_eos,
            skip_special_tokens=body.skip_special_tokens, **({"window": body.window} if body.window else {}))
    except SettingError as e:
        param = max_tokens_name if e.name == "max_new_tokens" else e.name
        raise APIError(400, f"'{param}' {e.detail}", param) from None
    return n, settings


def prepare_completion(body: CompletionRequest, tokenizer: Tokenizer, core: DecodeCore,
                       limits: ServeLimits) -> Ask:
    """Check a completion request completely against the model and the limits."""
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise APIError(400, "'best_of' is not supported by this server (only equal to n)", "best_of")
    raw = body.prompts()
    n, settings = sampling(body, limits, body.max_tokens, len(raw))
    context = core.block_size
    keep = body.truncate_prompt_tokens
    if keep is not None and keep > context:
        raise APIError(400, f"'truncate_prompt_tokens' must be at most the context length, {context}, got {keep}",
                       "truncate_prompt_tokens")
    hint = "shorten it or pass truncate_prompt_tokens to keep its end"
    ids, texts = [], []
    for i, p in enumerate(raw):
        if isinstance(p, str) and keep is None and (fewest := tokenizer.fewest_tokens(p)) > context:
            # refused before it is tokenized: a megabytes-long prompt costs nothing (the interpreter lock
            # tokenizing would hold is what keeps /health and the streams answering)
            raise prompt_refused(prompt_too_long(fewest, context, i), "prompt", hint)
        p_ids = encode_text(tokenizer, p) if isinstance(p, str) else list(p)
        if len(p_ids) > limits.max_prompt_tokens:
            raise APIError(400, f"'prompt' has {len(p_ids):,} tokens; at most {limits.max_prompt_tokens:,} are "
                                "allowed", "prompt")
        try:  # every id, after the cheap length checks, before any is cut
            core.check([p_ids], longer=keep is not None)
        except PromptError as e:
            raise prompt_refused(e, "prompt", hint) from None
        cut = keep is not None and len(p_ids) > keep
        if cut:
            p_ids = p_ids[-keep:]  # left truncation, as vLLM does: the model sees the prompt's end
        ids.append(p_ids)
        texts.append(p if isinstance(p, str) and not cut else tokenizer.decode(tokenizer.without_special(p_ids)
                                                                              if settings.skip_special_tokens
                                                                              else p_ids))
    return Ask(ids, texts, settings, n, body.echo, body.logprobs)


def prepare_chat(body: ChatCompletionRequest, tokenizer: Tokenizer, core: DecodeCore, limits: ServeLimits) -> Ask:
    """Check a chat request: the model must have the chat template; the conversation is rendered with it,
    its oldest whole turns dropped (never the system message) until it fits the context with room for the
    reply; a 400 only when the last user message alone does not fit. The reply ends at <|assistant_end|>."""
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    logprobs = body.top_logprobs_asked()
    n, settings = sampling(body, limits, body.limit(), 1, max_tokens_name=name)
    try:
        tokenizer.require_chat_template()
        messages = parse_messages(body.messages, "'messages'")
        fitted = fit_conversation(tokenizer, messages, core.block_size,
                                  reply_room(settings.max_new_tokens, core.block_size))
    except ConversationTooLong as e:
        raise APIError(400, str(e), "messages", code="context_length_exceeded") from None
    except UserError as e:
        raise APIError(400, str(e), "messages") from None
    if len(fitted.ids) > limits.max_prompt_tokens:
        raise APIError(400, f"'messages' are {len(fitted.ids):,} tokens; at most {limits.max_prompt_tokens:,} are "
                            "allowed", "messages")
    try:
        core.check([fitted.ids])
    except PromptError as e:
        raise prompt_refused(e, "messages", "shorten the conversation") from None
    settings = settings.replace(stop_token_ids=tuple(sorted(chat_stop_ids(tokenizer))))
    return Ask([fitted.ids], [""], settings, n, False, logprobs, chat=True, dropped=fitted.dropped)

"""The chat template: conversations as tokens, the same for fine-tuning, sampling and serving.

Owns the special tokens (`SPECIALS`), `Message` and `parse_messages` (OpenAI-style `{"role", "content"}`
lists checked into one clear error each), `chat_tokenizer` (a run's tokenizer with the specials added: BPE
and GPT-2 get added special tokens, the char tokenizer reserved ids after its characters; whether a tokenizer
has them is its own `has_chat_template()` / `require_chat_template()`), `render`
(messages -> token ids, and which ids are targets to learn) and `prompt_ids` (messages up to the start of
the assistant's reply, for generation), `fit_conversation` (a conversation longer than the context loses its
oldest whole turns, never the system message: the one rule the server, `scratchgpt chat` and the engine
share) and `stop_ids` (what ends a reply). Does not own training, the loader or the engine; they call these.

A conversation is, token for token:

    <|system_start|> text <|system_end|>            (optional, first)
    <|user_start|> text <|user_end|>
    <|assistant_start|> text <|assistant_end|>
    <|user_start|> ...

Fine-tuning learns the assistant's text and its `<|assistant_end|>` (so the model learns when to stop);
everything else is context, never a target. Generation feeds the conversation and `<|assistant_start|>`,
and the reply ends at `<|assistant_end|>` (or any other template token). Role names in user text are plain
text: a special token can only come from the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from .errors import ChatError
from .tokenizers.base import CHAT_SPECIALS, Tokenizer

ROLES = ("system", "user", "assistant")
SPECIALS = CHAT_SPECIALS  # <|system_start|>, <|system_end|>, <|user_start|>, ... (tokenizers/base.py)
MAX_MESSAGES = 1024

# The template as Jinja, the form Hugging Face tokenizers and vLLM's /tokenizer_info give it (clients such as
# lm-evaluation-harness render it, then tokenize with the special tokens' names recognised): the same ids
# as `prompt_ids` (with add_generation_prompt) and `render`.
JINJA_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}_start|>{{ message['content'] }}"
                  "<|{{ message['role'] }}_end|>{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}")


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


def parse_messages(obj: Any, where: str = "messages") -> list[Message]:
    """OpenAI-style messages checked: a non-empty list of {"role", "content"} objects with a known role and
    string content; a system message only first. `where` names the place in errors (a file line, a field)."""
    if not isinstance(obj, list) or not obj:
        raise ChatError(f"{where} must be a non-empty list of messages")
    if len(obj) > MAX_MESSAGES:
        raise ChatError(f"{where} holds {len(obj)} messages; at most {MAX_MESSAGES} are allowed")
    out = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict):
            raise ChatError(f"{where}[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"{where}[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatError(f"{where}[{i}] ('{role}') must have string content")
        if role == "system" and i:
            raise ChatError(f"{where}[{i}] is a system message; only the first message may be one")
        out.append(Message(role, content))
    return out


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the chat template's special tokens (a tokenizer that has them is returned as is)."""
    if tokenizer.has_chat_template():
        return tokenizer
    return tokenizer.with_special_tokens(list(SPECIALS))


def _specials(tokenizer: Tokenizer) -> dict[str, int]:
    tokenizer.require_chat_template()
    return tokenizer.special_tokens


def render(tokenizer: Tokenizer, messages: list[Message]) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per id, whether it is a target to learn (the assistant's text
    and its closing token)."""
    ids: list[int] = []
    learn: list[bool] = []
    specials = _specials(tokenizer)
    for m in messages:
        start, end = specials[f"<|{m.role}_start|>"], specials[f"<|{m.role}_end|>"]
        body = tokenizer.encode(m.content) if m.content else []
        teach = m.role == "assistant"
        ids += [start, *body, end]
        learn += [False] + [teach] * (len(body) + 1)
    return ids, learn


def prompt_ids(tokenizer: Tokenizer, messages: list[Message]) -> list[int]:
    """The conversation so far, then `<|assistant_start|>`: what the model continues with its reply."""
    ids, _ = render(tokenizer, messages)
    return ids + [_specials(tokenizer)["<|assistant_start|>"]]


class ConversationTooLong(ChatError):
    """Even the system message and the last user message alone do not fit the context."""


@dataclass(frozen=True)
class Fitted:
    """A conversation fitted to a context: the prompt's ids (the kept messages, then <|assistant_start|>), the
    messages kept, and how many were dropped (the oldest, after the system message)."""

    ids: list[int]
    messages: list[Message]
    dropped: int


def reply_room(max_new_tokens: int, context: int) -> int:
    """Tokens a conversation leaves free for the reply: its length, up to half the context."""
    return min(max_new_tokens, context // 2)


def fit_conversation(tokenizer: Tokenizer, messages: list[Message], context: int, room: int = 0) -> Fitted:
    """The prompt of `messages` within `context` tokens, leaving `room` for the reply when it can.

    Whole turns go, oldest first (a turn starts at a user message and runs to the next one); the system message
    always stays. Turns are dropped until the prompt leaves `room` tokens free, but never the last user
    message's turn: what must fit the context is the system message, that turn and the reply's opening token,
    else `ConversationTooLong` (one sentence saying how long it is)."""
    specials = _specials(tokenizer)
    parts = [render(tokenizer, [m])[0] for m in messages]  # each message's ids: the prompt is their sum
    head = 1 if messages and messages[0].role == "system" else 0
    starts = sorted({head} | {i for i in range(head, len(messages)) if messages[i].role == "user"})
    after = list(accumulate(len(p) for p in reversed(parts)))[::-1] + [0]  # after[k]: tokens of messages k..

    def size(k: int) -> int:
        return sum(len(p) for p in parts[:head]) + after[k] + 1

    keep = next((k for k in starts if size(k) + room <= context), starts[-1])
    if size(keep) > context:
        last = keep < len(messages) and messages[keep].role == "user"
        what = "the last user message alone" if last else "the conversation"
        raise ConversationTooLong(
            f"this model's context length is {context} tokens, but {what} takes {size(keep):,} (with "
            f"{'the system message and ' if head else ''}the reply's opening token); shorten it")
    ids = [i for p in parts[:head] + parts[keep:] for i in p] + [specials["<|assistant_start|>"]]
    return Fitted(ids, messages[:head] + messages[keep:], keep - head)


def stop_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Tokens that end an assistant's reply: its closing token, and any other token of the template (a model
    that starts another turn is done with this one), and <|endoftext|> where there is one. So a reply's text
    never holds a template token."""
    specials = _specials(tokenizer)
    out = {specials[name] for name in SPECIALS}
    if tokenizer.eot_token is not None:
        out.add(tokenizer.eot_token)
    return frozenset(out)


__all__ = ["JINJA_TEMPLATE", "ChatError", "ConversationTooLong", "Fitted", "Message", "ROLES", "SPECIALS",
           "chat_tokenizer", "fit_conversation", "parse_messages", "prompt_ids", "render", "reply_room", "stop_ids"]

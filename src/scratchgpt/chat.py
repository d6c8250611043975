"""The chat template: conversations as tokens, the same for fine-tuning, sampling and serving.

Owns the special tokens (`SPECIALS`), `Message` and `parse_messages` (OpenAI-style `{"role", "content"}`
lists checked into one clear error each), `chat_tokenizer` (a run's tokenizer with the specials added: BPE
and GPT-2 get added special tokens, the char tokenizer reserved ids after its characters), `render`
(messages -> token ids, and which ids are targets to learn) and `prompt_ids` (messages up to the start of
the assistant's reply, for generation), and `stop_ids` (what ends a reply). Does not own training, the
loader or the engine; they call these.

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
from typing import Any

from .errors import UserError

ROLES = ("system", "user", "assistant")
SPECIALS = tuple(f"<|{role}_{edge}|>" for role in ROLES for edge in ("start", "end"))
MAX_MESSAGES = 1024


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


class ChatError(UserError):
    """A conversation that is not one: an unknown role, empty messages, a run without the template."""


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


def chat_tokenizer(tokenizer):
    """The tokenizer with the chat template's special tokens (a tokenizer that has them is returned as is)."""
    if has_template(tokenizer):
        return tokenizer
    grow = getattr(tokenizer, "with_special_tokens", None)
    if grow is None:
        raise ChatError(f"the {getattr(tokenizer, 'kind', 'given')} tokenizer cannot hold the chat template's special "
                        "tokens; chat needs a char, bpe or gpt2 tokenizer")
    return grow(list(SPECIALS))


def has_template(tokenizer) -> bool:
    """Whether a tokenizer holds the chat template (a run fine-tuned for chat, or prepared for it)."""
    have = getattr(tokenizer, "special_tokens", {}) or {}
    return all(s in have for s in SPECIALS)


def _special(tokenizer, name: str) -> int:
    ids = getattr(tokenizer, "special_tokens", {}) or {}
    if name not in ids:
        raise ChatError("this run has no chat template (its tokenizer lacks the chat special tokens); fine-tune it "
                        "on conversations first (data.format = \"chat\")")
    return ids[name]


def render(tokenizer, messages: list[Message]) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per id, whether it is a target to learn (the assistant's text
    and its closing token)."""
    ids: list[int] = []
    learn: list[bool] = []
    for m in messages:
        start, end = _special(tokenizer, f"<|{m.role}_start|>"), _special(tokenizer, f"<|{m.role}_end|>")
        body = tokenizer.encode(m.content) if m.content else []
        teach = m.role == "assistant"
        ids += [start, *body, end]
        learn += [False] + [teach] * (len(body) + 1)
    return ids, learn


def prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The conversation so far, then `<|assistant_start|>`: what the model continues with its reply."""
    ids, _ = render(tokenizer, messages)
    return ids + [_special(tokenizer, "<|assistant_start|>")]


def stop_ids(tokenizer) -> frozenset[int]:
    """Tokens that end an assistant's reply: its closing token, and any other token of the template (a model
    that starts another turn is done with this one), and <|endoftext|> where there is one. So a reply's text
    never holds a template token."""
    out = {_special(tokenizer, name) for name in SPECIALS}
    eot = getattr(tokenizer, "eot_token", None)
    if isinstance(eot, int):
        out.add(eot)
    return frozenset(out)


__all__ = ["ChatError", "Message", "ROLES", "SPECIALS", "chat_tokenizer", "has_template", "parse_messages",
           "prompt_ids", "render", "stop_ids"]

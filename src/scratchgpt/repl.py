"""`scratchgpt sample --interactive` and `scratchgpt chat`: small loops over what the user types.

`run_repl` (sample --interactive) keeps continuing the text the user types.

Owns the REPL: each line the user types is appended to the running text (on a line of its own, ending in
a newline) and the model's continuation streams out and is appended too; an empty line just asks for more.
Lines starting with `/` change the sampling settings in place (`/temperature 0.5`, `/top_k 40`, `/top_p 0.9`,
`/max_new_tokens 200`, `/seed 1`, `/stop text`, `/stop` to clear, `/settings`, `/reset`, `/help`, `/quit`).
A bad value or an unknown character prints one `error: ...` line and the loop goes on.

`run_chat` (chat) keeps a conversation: each line the user types is a user message, the model's reply (through
the run's chat template) streams out and joins the history; `/reset` forgets the conversation, `/system TEXT`
sets the system message (`/system` alone removes it), `/history` shows it, and the same sampling commands
apply. A conversation longer than the context sends the model its newest whole turns and the system message
(`chat.fit_conversation`, as the server does) and says so in a note line. Does not own sampling, the template
or the model (`generate.py`, `chat.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from .errors import UserError, closest
from .generate import Engine
from .sampling import SamplingSettings

HELP = """type text and press Enter: the model continues it; an empty line continues further.
commands: /temperature X   /top_k N|none   /top_p X   /max_new_tokens N   /seed N|none   /window full|half
          /stop TEXT (add a stop string, \\n for a newline; /stop alone clears)   /settings   /reset (forget the text)
          /help   /quit (or end of input)"""

CHAT_HELP = """type a message and press Enter: the model answers it, and remembers the conversation.
commands: /system TEXT (the system message; /system alone removes it)   /reset (forget the conversation)
          /history   /temperature X   /top_k N|none   /top_p X   /max_new_tokens N   /seed N|none
          /settings   /help   /quit (or end of input)"""

SETTINGS = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop", "window")
OTHER = ("settings", "reset", "help", "quit", "exit")


def _number(name: str, text: str, kind: type) -> int | float | None:
    if name in ("top_k", "seed") and text.lower() in ("none", "off"):
        return None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"/{name} needs a {'number' if kind is float else 'whole number'}, got {text!r}") from None


def apply_command(line: str, s: SamplingSettings) -> tuple[SamplingSettings, str | None]:
    """Apply one `/name value` line; return the new settings and an action (settings, reset, help, quit)."""
    name, _, arg = line[1:].strip().partition(" ")
    name, arg = name.replace("-", "_").lower(), arg.strip()
    if name in OTHER:
        return s, "quit" if name == "exit" else name
    if name not in SETTINGS:
        raise UserError(f"unknown command '/{name}'{closest(name, SETTINGS + OTHER)}; /help lists them")
    if name == "stop":  # \n and \t stand for a newline and a tab, so a blank line can be a stop string
        arg = arg.replace("\\n", "\n").replace("\\t", "\t")
        return s.replace(stop=(*s.stop, arg) if arg else ()), None
    if name == "window":
        return s.replace(window=arg), None
    if not arg:
        raise UserError(f"/{name} needs a value, e.g. /{name} {getattr(s, name) if getattr(s, name) is not None else 1}")
    kind = float if name in ("temperature", "top_p") else int
    return s.replace(**{name: _number(name, arg, kind)}), None


def describe(s: SamplingSettings) -> str:
    return (f"temperature {s.temperature:g}, top_k {s.top_k or 'none'}, top_p {s.top_p:g}, "
            f"max_new_tokens {s.max_new_tokens}, seed {'none' if s.seed is None else s.seed}, "
            f"stop {list(s.stop) if s.stop else 'none'}, window {s.window}")


def _lines(read: Callable[[], str]) -> Iterator[str]:
    """What the user types, line by line, until the end of input."""
    while True:
        try:
            yield read()
        except EOFError:
            return


def run_repl(engine: Engine, settings: SamplingSettings, read: Callable[[], str] | None = None,
             out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Loop until /quit or end of input. `read` returns one line (raises EOFError at the end)."""
    out, err = out or sys.stdout, err or sys.stderr
    read = read or (lambda: input("> " if sys.stdin.isatty() else ""))
    text, s = "", settings
    err.write(HELP + "\n")
    for line in _lines(read):
        try:
            if line.startswith("/"):
                s, action = apply_command(line, s)
                if action == "quit":
                    break
                if action == "reset":
                    text = ""
                if action == "help":
                    err.write(HELP + "\n")
                if action in (None, "settings", "reset"):
                    err.write(describe(s) + "\n")
                continue
            if line:
                text += ("\n" if text and not text.endswith("\n") else "") + line + "\n"
            pieces = engine.stream(text, s)  # a bad prompt raises here, before anything is shown
            for piece in pieces:
                out.write(piece)
                out.flush()
                text += piece
            if text and not text.endswith("\n"):
                out.write("\n")  # for the display only; the next typed line starts a new line in the text too
            out.flush()
        except UserError as e:
            err.write(f"error: {e}\n")


def run_chat(engine: Engine, settings: SamplingSettings, system: str | None = None,
             read: Callable[[], str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """A terminal conversation until /quit or end of input. `read` returns one line (EOFError at the end)."""
    out, err = out or sys.stdout, err or sys.stderr
    read = read or (lambda: input("you> " if sys.stdin.isatty() else ""))
    history: list[dict] = []
    s = settings

    def conversation() -> list[dict]:
        """The system message (if any) and the turns so far."""
        return ([{"role": "system", "content": system}] if system else []) + history

    err.write(CHAT_HELP + "\n")
    for line in _lines(read):
        try:
            if line.startswith("/system"):
                system = line[len("/system"):].strip() or None
                err.write(f"system message: {system!r}\n" if system else "no system message\n")
                continue
            if line.strip() == "/history":
                for m in conversation():
                    err.write(f"{m['role']}: {m['content']}\n")
                continue
            if line.startswith("/"):
                s, action = apply_command(line, s)
                if action == "quit":
                    break
                if action == "reset":
                    history = []
                if action == "help":
                    err.write(CHAT_HELP + "\n")
                if action in (None, "settings", "reset"):
                    err.write(describe(s) + "\n")
                continue
            if not line.strip():
                continue
            # a bad message raises here, in fit_chat, before anything is printed
            fitted = engine.fit_chat(conversation() + [{"role": "user", "content": line}], s)
            if fitted.dropped:
                err.write(f"note: the conversation is longer than the context of {engine.block_size} tokens with "
                          f"room for the reply; the model sees its newest {len(fitted.messages)} messages "
                          f"({fitted.dropped} older ones left out{', the system message kept' if system else ''})\n")
            reply = ""
            for _, piece in engine.stream_fitted(fitted, s):
                out.write(piece)
                out.flush()
                reply += piece
            out.write("\n")
            out.flush()
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
        except UserError as e:
            err.write(f"error: {e}\n")

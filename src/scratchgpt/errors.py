"""The one kind of exception a user can cause.

Owns `UserError` and its subclasses. Library code raises these for anything a user can get wrong (a bad
config, missing data, an unknown character, a corrupt checkpoint); the CLI turns them into a single
`error: <message>` line and exit code 2. Any other exception is a bug and may show a traceback.
Does not own printing or exit codes: `cli.py` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix; the message is one clear sentence."""

    exit_code = 2


class ConfigError(UserError):
    """A recipe or override names an unknown key or gives a value of the wrong type."""


class DataError(UserError):
    """Missing, empty or undecodable data, or a prepared directory that is not one."""


class CheckpointError(UserError):
    """A run directory that is not one, or a corrupt, truncated or unsafe checkpoint."""


class ChatError(UserError):
    """A conversation that is not one (an unknown role, empty messages), or a run without the chat template."""


class DiskError(UserError, OSError):
    """A write the filesystem refused (full, read-only, no permission): names the path and what was kept.
    Also an OSError, so code that handles a failed write as one still does."""

    reason = ""  # the system's words (e.g. "No space left on device"), for an outer writer to reuse


class UsageError(UserError):
    """A command line that does not parse: an unknown flag, a missing argument, a number out of range."""


class Interrupted(UserError):
    """A command stopped by a signal (Ctrl-C, SIGTERM, SIGHUP): training after saving a checkpoint, `serve` after
    finishing its open streams; the exit status is 128 + the signal's number, as a shell reports a process a
    signal ended (130 for Ctrl-C)."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


def closest(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """Return ' (did you mean 'x'?)' for the nearest choice (shown after prefix), or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{match[0]}'?)" if match else ""

"""Who may write an output directory: the one rule every command that writes a directory goes through.

Owns `claim` (may this command write this directory? one sentence when not), `Claim.stage` (build the new
directory beside the target and swap it in whole, keeping what is not the command's), `Kind` (a kind of
output directory: how it is recognised, which of its entries are its own) and the kinds of the package:
`RUN`, `EXPORT`, `DATA`, `TOKENIZER`, `LECTURE` (scripts and benchmarks make their own `Kind`s). Does not
own writing files (`fileio.py`), what is written, or what a resumed run may change (`train/ownership.py`).

The rule:

- A command writes into a new or empty directory, or into one of its own kind. A directory that holds
  nothing but the command's own inputs (`data/x/input.txt` beside the data prepared from it) counts as
  empty; so does one holding only what a killed writer of the kind left (`Kind.leftovers`: a run killed
  before its first checkpoint, which has no `config.json`).
- Replacing its own kind needs `--force` where the directory holds work that the same command cannot simply
  make again (`Kind.needs_force`): a run (`train --force`, `import-hf --force`), an export (`export
  --force`), and prepared data of the other format (`prepare chat` over text data or `prepare text` over
  chat data: `prepare --force`). Re-preparing data, retraining a tokenizer and the lecture redoing one of
  its steps need none.
- It never deletes what it did not write: the entries of the old directory that are not the kind's outputs
  (the user's notes, the input file, a run's files beside data) are carried into the new one.
- Anything else is refused, `--force` or not, with one sentence naming the directory and what it holds:
  "'runs/x' holds a run (config.json); `prepare chat` writes only into a new or empty directory or one
  holding prepared data: choose another --out".
- The new directory is built in a staging directory beside the target and swapped in whole
  (`Claim.stage`, over `fileio.atomic_dir`): a kill leaves the old directory or the new one. A training run,
  which writes for hours, goes through the same check and then writes file by file in the order that keeps
  its directory valid (train/writer.py).

Kinds are recognised by their marker files: `config.json` with a `"config"` section for a run (a damaged one
counts as a run too: the cautious reading), `config.json` with a `"model_type"` for a Hugging Face export,
`meta.json` for prepared data (its `"data_format"`: `"chat"`, else text), `tokenizer.json` alone for a
tokenizer, directories of directories for the lecture's runs (`<budget>/<step>/`). Imports nothing heavy
(no torch): `prepare` checks its output before any tokenizer worker starts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .fileio import atomic_dir, leftover_pattern
from .schema import read_json

_LEFTOVER = leftover_pattern(".+")  # fileio's temp files and staging directories, of any target
_SMALL_JSON = 1 << 20  # a marker file larger than this is not read to tell kinds apart


@dataclass(frozen=True)
class Kind:
    """A kind of output directory."""

    name: str  # what it holds, as a refusal says it: "a run", "prepared data"
    marker: Callable[[Path], bool]  # whether a directory holds one
    is_output: Callable[[str], bool]  # whether an entry is the kind's own (replaced), not the user's (carried)
    needs_force: bool = False  # replacing one needs --force: it holds work the same command cannot simply redo
    # a directory holding only its outputs, without the marker, is a killed writer's when these names say so
    # (what such a writer always leaves among them); None: never
    leftovers: frozenset[str] | None = None
    variant: Callable[[Path], str | None] | None = None  # which sort of the kind a directory holds (data: text, chat)

    def carry(self, name: str) -> bool:
        """Whether an entry of an old directory goes into the new one: everything that is not the kind's."""
        return not self.is_output(name)


def _json(path: Path) -> Any:
    """A small JSON file's contents; None when it is missing, too large, not JSON or nested too deeply to be
    read (the caller decides)."""
    try:
        return read_json(path, f"'{path}'", UserError, most_bytes=_SMALL_JSON)
    except UserError:
        return None


def _is_export(d: Path) -> bool:
    cfg = _json(d / "config.json")
    return isinstance(cfg, dict) and "model_type" in cfg


def _is_run(d: Path) -> bool:
    return (d / "config.json").is_file() and not _is_export(d)


def _data_format(d: Path) -> str | None:
    meta = _json(d / "meta.json")
    if not isinstance(meta, dict):
        return None  # damaged: any prepare may replace it (loading it says to prepare it again)
    fmt = meta.get("data_format", "text")
    return fmt if isinstance(fmt, str) else None


def entries(d: Path) -> list[Path]:
    """A directory's entries, without what killed writers left (their names follow fileio's pattern)."""
    return sorted(p for p in d.iterdir() if not _LEFTOVER.fullmatch(p.name))


def _lecture_runs(d: Path) -> bool:
    found = entries(d)
    return bool(found) and all(p.is_dir() and not p.is_symlink() and all(q.is_dir() for q in entries(p))
                               for p in found)


# Files a training run writes into its directory (everything else there is the user's and is kept).
RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors", "model-best.safetensors",
             "trainer_state.safetensors", "trainer_state.json", "metrics.jsonl", "loss.png")
# Files `export --format hf` may write (config, weights, the tokenizer in whichever form it takes).
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.json", "merges.txt", "sentencepiece.model")
# What `prepare` writes: meta.json, train/val ids (or shards), chat data's learn masks and offsets;
# `.prepare-*`: an older version's staging.
_DATA_OUTPUT = re.compile(r"meta\.json|(train|val)(_\d+)?\.bin|(train|val)\.(learn|offsets)\.bin|\.prepare-.*")

# a run killed before its first checkpoint has logged metrics or written weights (tokenizer.json comes after
# them), so a directory holding only, say, a tokenizer.json or a plot is somebody else's, not a killed run's
RUN = Kind("a run", _is_run, frozenset(RUN_FILES).__contains__, needs_force=True,
           leftovers=frozenset({"metrics.jsonl", "model.safetensors", "trainer_state.safetensors"}))
EXPORT = Kind("a Hugging Face export", _is_export, frozenset(EXPORT_FILES).__contains__, needs_force=True)
DATA = Kind("prepared data", lambda d: (d / "meta.json").is_file(),
            lambda name: _DATA_OUTPUT.fullmatch(name) is not None, variant=_data_format)
TOKENIZER = Kind("a tokenizer", lambda d: (d / "tokenizer.json").is_file() and not (d / "config.json").exists()
                 and not (d / "meta.json").exists(), lambda name: name == "tokenizer.json")
LECTURE = Kind("the lecture's runs (<budget>/<step>/)", _lecture_runs, lambda name: False)


def describe(d: Path, found: list[Path] | None = None) -> str:
    """What a directory holds, in a few words: "a run (config.json)", "other files ('notes.txt', 'a.csv')"."""
    if _is_run(d):
        return "a run (config.json)"
    if _is_export(d):
        return "a Hugging Face export (config.json)"
    if DATA.marker(d):
        fmt = _data_format(d)
        return f"prepared {fmt + ' ' if fmt else ''}data (meta.json)"
    if TOKENIZER.marker(d):
        return "a tokenizer (tokenizer.json)"
    if LECTURE.marker(d):
        return LECTURE.name
    names = [p.name for p in (found if found is not None else entries(d))]
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"files it did not write ({shown})"


@dataclass(frozen=True)
class Claim:
    """A command's leave to write `target`: `replaces` when an existing directory of its kind is replaced."""

    target: Path
    kind: Kind
    replaces: bool

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """An empty staging directory beside target; on success it replaces target in one step, carrying
        the old directory's entries that are not the kind's outputs. A failure or a kill leaves target as it was."""
        with atomic_dir(self.target, carry=self.kind.carry) as tmp:
            yield tmp


def claim(target: str | Path, kind: Kind, command: str, *, force: bool = False, variant: str | None = None,
          inputs: Iterable[str | Path] = (), flag: str = "--out", held: str | None = None) -> Claim:
    """Check that `command` may write a `kind` directory at target (see the module docstring); one sentence
    (`UserError`) when not. `variant`: the sort written (data: "text" or "chat"); `inputs`: the command's
    input files and directories, which may lie inside target; `flag`: the option that names target; `held`:
    the refusal for a directory of the kind holding work without --force (default: pass --force)."""
    t = Path(target)
    if not t.exists():
        if t.is_symlink():
            raise UserError(f"'{t}' is a symbolic link to nothing; remove it or choose another {flag}")
        return Claim(t, kind, replaces=False)
    if not t.is_dir():
        raise UserError(f"'{t}' exists and is not a directory; choose another {flag}")
    mine = [Path(i).resolve() for i in inputs]
    found = [p for p in entries(t) if not _inside(p.resolve(), mine)]
    if kind.marker(t):
        if kind.needs_force and not force:
            raise UserError(held or f"'{t}' already holds {kind.name}; pass --force to replace it (the files in it "
                                     f"that {command} did not write are kept), or choose another {flag}")
        was = kind.variant(t) if kind.variant is not None else None
        if variant is not None and was is not None and was != variant and not force:
            raise UserError(f"'{t}' holds prepared {was} data, and `{command}` would turn it into {variant} data; "
                            f"pass --force to replace it, or choose another {flag}")
        return Claim(t, kind, replaces=True)
    names = {p.name for p in found}
    if not found or (kind.leftovers is not None and all(kind.is_output(n) for n in names)
                     and names & kind.leftovers):
        return Claim(t, kind, replaces=False)
    raise UserError(f"'{t}' holds {describe(t, found)}; `{command}` writes only into a new or empty directory or "
                    f"one holding {kind.name}, and replaces nothing else: choose another {flag}")


def _inside(p: Path, dirs: list[Path]) -> bool:
    return any(p == d or d in p.parents for d in dirs)


__all__ = ["Claim", "DATA", "EXPORT", "EXPORT_FILES", "Kind", "LECTURE", "RUN", "RUN_FILES", "TOKENIZER",
           "claim", "describe", "entries"]

"""One check for the JSON scratchgpt reads: each document's shape declared beside its reader, one sentence for
the first thing wrong with it.

Owns `read_json` (a file as JSON: missing, a directory, too large, not UTF-8 or not JSON is one sentence),
`read_jsonl` (a JSON Lines file, one checked value per line, a line too long refused before it is held),
`check` (a value against a schema, raising the reader's error class with the reader's words around the
problem) and `problem` (the same, as a string or None, for readers that only probe). A schema is:

    str, int, float, bool, dict, list  the value's type (int: a whole number, never a bool; float: any number,
                                       infinities included, never NaN)
    Str(empty=False)                   a string, not empty
    Int(lo, hi)                        a whole number in [lo, hi]
    ListOf(spec, least, most)          a list of `spec` values, with at least / at most that many
    MapOf(spec)                        an object whose every value is `spec`
    {"key": spec, ...}                 an object with these keys (others are allowed, and not checked)
    Opt(spec)                          inside an object schema: the key may be missing
    OneOf(a, b, ...)                   one of these values

    check(meta, META, f"'{path}' is damaged", DataError, f"; prepare '{d}' again")
    -> DataError("'data/x/meta.json' is damaged: 'tokenizer' is missing; prepare 'data/x' again")

Does not own what the values mean: readers check that after (a vocabulary that fits its dtype, a label
that indexes its choices). Imports nothing heavy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, UserError
from .limits import MAX_LINE_BYTES

MAX_JSON_BYTES = 64 << 20  # a metadata file larger than this is not read (a tokenizer.json of GPT-2 is ~2 MB)


@dataclass(frozen=True)
class Str:
    empty: bool = False


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None


@dataclass(frozen=True)
class ListOf:
    spec: Any
    least: int = 0
    most: int | None = None


@dataclass(frozen=True)
class MapOf:
    spec: Any


@dataclass(frozen=True)
class Opt:
    spec: Any


class OneOf:
    def __init__(self, *values: Any):
        self.values = values


_NOUNS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "an object",
          list: "a list"}


def _noun(spec: Any) -> str:
    if isinstance(spec, Str):
        return "a string" if spec.empty else "a non-empty string"
    if isinstance(spec, Int):
        lo, hi = spec.lo, spec.hi
        if lo is not None and hi is not None:
            return f"a whole number from {lo:,} to {hi:,}"
        return "a whole number" + (f" of at least {lo:,}" if lo is not None else f" of at most {hi:,}" if hi is not None else "")
    if isinstance(spec, ListOf):
        what = "a non-empty list" if spec.least == 1 else "a list"
        inner = _noun(spec.spec)
        return f"{what} of {inner.split(' ', 1)[1]}s" if inner.startswith(("a ", "an ")) else what
    if isinstance(spec, MapOf):
        return f"an object of {_noun(spec.spec).split(' ', 1)[1]}s"
    if isinstance(spec, dict):
        return "an object"
    if isinstance(spec, OneOf):
        return "one of " + ", ".join(json.dumps(v) for v in spec.values)
    return _NOUNS[spec]


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else f"a list of {len(value):,}"
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def problem(value: Any, spec: Any, path: str = "") -> str | None:
    """What is wrong with value against spec (None: nothing), naming the place: "'shards.train[0].tokens' ..."."""
    here = f"'{path}' " if path else ""

    def wrong() -> str:
        return f"{here}must be {_noun(spec)}, got {_show(value)}" if path else f"expected {_noun(spec)}, got {_show(value)}"

    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return wrong()
        for key, sub in spec.items():
            where = f"{path}.{key}" if path else key
            if key not in value:
                if isinstance(sub, Opt):
                    continue
                return f"'{where}' is missing"
            if (p := problem(value[key], sub.spec if isinstance(sub, Opt) else sub, where)) is not None:
                return p
        return None
    if isinstance(spec, ListOf):
        if not isinstance(value, list) or len(value) < spec.least:
            return wrong()
        if spec.most is not None and len(value) > spec.most:
            return f"{here}has {len(value):,} entries, more than the {spec.most:,} allowed"
        return next((p for i, v in enumerate(value) if (p := problem(v, spec.spec, f"{path}[{i}]")) is not None), None)
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return wrong()
        return next((p for k, v in value.items() if (p := problem(v, spec.spec, f"{path}.{k}")) is not None), None)
    if isinstance(spec, OneOf):
        return None if any(value == v and type(value) is type(v) for v in spec.values) else wrong()
    if isinstance(spec, Str):
        return None if isinstance(value, str) and (spec.empty or value) else wrong()
    if isinstance(spec, Int) or spec is int:
        lo, hi = (spec.lo, spec.hi) if isinstance(spec, Int) else (None, None)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok and (lo is None or value >= lo) and (hi is None or value <= hi) else wrong()
    if spec is float:
        try:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        except OverflowError:  # an int too large for a float (JSON allows any number of digits)
            ok = False
        return None if ok else wrong()
    if spec is bool:
        return None if isinstance(value, bool) else wrong()
    return None if isinstance(value, spec) else wrong()


def check(value: Any, spec: Any, where: str, error: type[UserError] = DataError, hint: str = "") -> Any:
    """value, when it fits spec; else `error("<where>: <problem><hint>")`."""
    if (p := problem(value, spec)) is not None:
        raise error(f"{where}: {p}{hint}")
    return value


def read_json(path: str | Path, where: str, error: type[UserError] = DataError, hint: str = "",
              spec: Any = None, most_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, checked against spec when given; anything wrong is `error("<where>: <what>{hint}")`,
    where names the file ("'runs/x/config.json' is damaged"). Its size is checked before it is read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise error(f"{where}: it is a directory{hint}")
        if size > most_bytes:
            raise error(f"{where}: it is {size:,} bytes, more than the {most_bytes:,} such a file may have{hint}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{where}: it is missing{hint}") from None
    except OSError as e:
        raise error(f"{where}: {e.strerror or e}{hint}") from None
    value = _loads(raw, where, error, hint)
    return value if spec is None else check(value, spec, where, error, hint)


def _loads(raw: bytes, where: str, error: type[UserError], hint: str = "") -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}){hint}") from None
    except ValueError as e:
        raise error(f"{where}: not valid JSON ({e}){hint}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be read{hint}") from None


def read_jsonl(path: str | Path, spec: Any, name: str, error: type[UserError] = DataError,
               most_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line number, value checked against spec) for each non-blank line of a JSON Lines file, read one line at
    a time; `name` says what the file is ("choices file"). A line longer than most_line_bytes is refused having
    read no more of it than that; a missing file, a directory, a bad line: one sentence each."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{name} '{p}' is a directory; give a file")
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below; the generator holds it across yields
    except FileNotFoundError:
        raise error(f"{name} '{p}' not found") from None
    except OSError as e:
        raise error(f"cannot read {name} '{p}': {e.strerror or e}") from None
    with f:
        n = 0
        while raw := f.readline(most_line_bytes + 1):
            n += 1
            where = f"{name} '{p}' line {n}"
            if len(raw) > most_line_bytes and not raw.endswith(b"\n"):
                raise error(f"{where} is longer than {most_line_bytes:,} bytes, the most one line may hold")
            if raw.strip():
                yield n, check(_loads(raw, where, error), spec, where, error)


__all__ = ["Int", "ListOf", "MapOf", "OneOf", "Opt", "Str", "check", "problem", "read_json", "read_jsonl"]

"""Named recipes: the TOML files under the repository's `configs/` (a wheel carries a copy), addressed from any
directory by their path there without `.toml`: `shakespeare_char_cpu`, `lecture/1_bigram`, `chat/demo_sft`.

Owns the list of names; resolving what a user typed (a TOML file that exists wins, then a name, also when
written as in a clone, `configs/NAME.toml`; anything else is one sentence naming the closest recipe); the
one-line summaries `scratchgpt recipes` prints, read from each recipe's `#:` header lines (`about`: what it
trains; `cpu` and `gpu`: how long it took where measured, from docs/benchmarks.md); and a recipe's text for
`scratchgpt recipes show`. Does not own what a recipe means (`config.py`) or where shipped files live
(`resources.py`).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, closest
from .resources import shipped

SUFFIX = ".toml"
HEADER = "#: "  # a recipe's summary lines, TOML behind the comment sign
NOT_MEASURED = "not measured"


def directory() -> Path:
    return shipped("configs")


def names() -> list[str]:
    """Every named recipe, sorted: top-level ones first, then each subdirectory's."""
    root = directory()
    found = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}")]
    return sorted(found, key=lambda n: (n.count("/"), n))


def _as_name(text: str) -> str:
    """`configs/lecture/1_bigram.toml` -> `lecture/1_bigram`: how a clone's docs spell a recipe, as a name."""
    name = Path(text).as_posix().removeprefix("./").removeprefix("configs/")
    return name.removesuffix(SUFFIX)


def find(recipe: str | Path) -> Path:
    """The TOML file a user means: an existing file as given, else the named recipe."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = _as_name(str(recipe))
    known = names()
    if name in known:
        return directory() / f"{name}{SUFFIX}"
    hint = closest(name, known) or f" (the closest is '{difflib.get_close_matches(name, known, n=1, cutoff=0)[0]}')"
    raise ConfigError(f"recipe '{recipe}' not found: neither a TOML file nor a named recipe{hint}; "
                      "`scratchgpt recipes` lists them")


def text(name: str) -> str:
    """A recipe's TOML, to copy and edit (`scratchgpt recipes show NAME > mine.toml`)."""
    return find(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Summary:
    name: str
    about: str  # what it trains
    data: str  # the data directory it reads (its data.dir)
    cpu: str  # about how long on a 2-core CPU, where measured
    gpu: str  # about how long on one GPU, where measured


def summary(name: str) -> Summary:
    """A recipe's `#:` header lines (`about`, `cpu`, `gpu`) and its data directory."""
    body = text(name)
    header = "\n".join(line[len(HEADER):] for line in body.splitlines() if line.startswith(HEADER))
    try:
        head, recipe = tomllib.loads(header), tomllib.loads(body)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe '{name}' is not valid TOML: {e}") from None
    data = recipe.get("data", {}).get("dir", "data/shakespeare_char")
    return Summary(name, str(head.get("about", "")), str(data), str(head.get("cpu", NOT_MEASURED)),
                   str(head.get("gpu", NOT_MEASURED)))


def listing() -> str:
    """One line per recipe: name, what it trains, its data, and the time on a 2-core CPU and on one GPU."""
    rows = [summary(n) for n in names()]
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name:<{width}}  {r.about}, on {r.data} | 2-core CPU: {r.cpu} | one GPU: {r.gpu}"
                     for r in rows)

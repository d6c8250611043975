"""Files the package ships that live outside `src/` in the repository: the recipes (`configs/`) and the
lecture notebook (`docs/lecture/lecture.ipynb`).

The repository holds the one copy. A wheel carries copies that its build makes (setup.py) under
`scratchgpt/_bundled/`, at the same relative paths; an editable install or a clone reads the repository's own
files beside `src/`. Owns finding these files, not what is in them (`recipes.py`, `lecture.py`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

_PACKAGE = Path(__file__).resolve().parent
BUNDLE = _PACKAGE / "_bundled"  # a built wheel's copies
SOURCE_TREE = _PACKAGE.parents[1]  # src/scratchgpt -> the repository, for an editable install or a clone


def root() -> Path:
    """The directory the shipped files hang from: the wheel's bundle when there is one, else the repository."""
    return BUNDLE if BUNDLE.is_dir() else SOURCE_TREE


def shipped(relative: str) -> Path:
    """The path of a shipped file or directory (e.g. "configs"); one sentence when this installation lacks it."""
    path = root() / relative
    if not path.exists():
        raise UserError(f"'{relative}' is missing from this installation of scratchgpt (looked in {root()}); "
                        "reinstall the package (pip install scratchgpt, or pip install . in a clone)")
    return path

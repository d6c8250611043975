"""The build step that ships the repository's recipes and the lecture notebook inside the package.

`configs/**/*.toml` and `docs/lecture/lecture.ipynb` stay where they are in the repository, the one copy anyone
edits. Building a wheel (`pip install .`, `pip wheel .`, `python -m build`, also from the sdist, which
MANIFEST.in makes carry them) copies them to `scratchgpt/_bundled/` at the same relative paths. An editable
install builds nothing: `scratchgpt.resources` reads the repository's own files there. Everything else about
the package is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = [*sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.toml")),
           "docs/lecture/lecture.ipynb"]


class BuildWithBundle(build_py):
    """build_py, then the bundled files copied into build_lib/scratchgpt/_bundled/."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):  # editable: read in place (scratchgpt/resources.py)
            for rel in BUNDLED:
                target = Path(self.build_lib) / "scratchgpt" / "_bundled" / rel
                self.mkpath(str(target.parent))
                self.copy_file(str(ROOT / rel), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        bundled = [str(Path(self.build_lib) / "scratchgpt" / "_bundled" / rel) for rel in BUNDLED]
        return super().get_outputs(include_bytecode) + bundled


setup(cmdclass={"build_py": BuildWithBundle})

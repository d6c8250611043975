"""The layering docs/architecture.md promises: sampling, scoring and serving never load the trainer."""

from __future__ import annotations

import subprocess
import sys

from conftest import untrained_run

INFERENCE = ("scratchgpt.api", "scratchgpt.generate", "scratchgpt.sampling", "scratchgpt.repl", "scratchgpt.evaluate",
             "scratchgpt.checkpoint", "scratchgpt.serve.app", "scratchgpt.serve.scheduler")


def test_loading_a_run_and_generating_never_imports_the_trainer(tmp_path):
    run, _ = untrained_run(tmp_path / "run")
    code = (f"import importlib, sys, scratchgpt\n"
            f"for name in {INFERENCE!r}:\n    importlib.import_module(name)\n"
            f"lm = scratchgpt.load({str(run)!r})\n"
            "assert len(lm.generate('a', max_new_tokens=3, seed=1)) == 3\n"
            "lm.score('abc')\n"
            "print(sorted(m for m in sys.modules if m.startswith('scratchgpt.train')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"

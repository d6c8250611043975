"""The `scratchgpt` command, run as a real process: every mistake a user can make is one `error:` line and
exit code 2, never a traceback, and leaves nothing half-written.

The cases are independent processes, so the module starts them together (a few at a time) and each test
checks one result: most of a case's time is importing torch. Variations of a case already run as a process
(`"process": False`) call the same `main` in this process instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main as cli_main
from scratchgpt.train import train


def recipe(path: Path, data_dir: Path) -> Path:
    path.write_text(
        f'[data]\ndir = "{data_dir}"\n'
        "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n"
        '[train]\nmax_iters = 2\nbatch_size = 4\neval_interval = 2\neval_iters = 1\ndevice = "cpu"\n'
    )
    return path


@pytest.fixture(scope="module")
def trained(small_text_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_run") / "run"
    train(tiny_config(small_text_dir, max_iters=2, eval_interval=2), out_dir=out, progress=False)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def cases(trained, small_text_dir, tmp_path_factory) -> dict[str, dict]:
    """name -> {args, expect (fragments of the error line), plus what the test checks afterwards}."""
    base = tmp_path_factory.mktemp("cli_cases")
    good = recipe(base / "tiny.toml", small_text_dir)
    corrupt = copy_run(trained, base / "corrupt")
    for name in (ckpt.MODEL, ckpt.MODEL_BEST):
        data = (corrupt / name).read_bytes()
        (corrupt / name).write_bytes(data[: len(data) // 3])
    (base / "not_a_run").mkdir()
    resume = copy_run(trained, base / "resume")
    inputs = {"empty": b"", "binary": b"caf\xe9 au lait \xff\xfe" * 20, "short": b"hello"}
    for name, data in inputs.items():
        (base / f"{name}.txt").write_bytes(data)
    (base / "prompt.txt").write_text("the \u00fcber fox", encoding="utf-8")
    return {
        "unknown_key": {"args": ["train", good, "--train.max_itres=5"],
                        "expect": ["unknown key 'train.max_itres'", "did you mean 'train.max_iters'"]},
        "unknown_key_in_recipe": {"process": False, "args": ["train", recipe(base / "typo.toml", small_text_dir), "--model.n_embed=8"],
                                  "expect": ["unknown key 'model.n_embed'", "did you mean 'model.n_embd'"]},
        "wrong_type": {"args": ["train", good, "--train.max_iters=lots"],
                       "expect": ["'train.max_iters' must be int", "'lots'"]},
        "wrong_choice": {"process": False, "args": ["train", good, "--model.norm=batchnorm"],
                         "expect": ["'model.norm' must be one of"]},
        "missing_data": {"args": ["train", recipe(base / "nodata.toml", base / "no_such_data"), "--out", base / "nodata_run"],
                         "expect": ["no_such_data", "not prepared", "scratchgpt prepare"],
                         "absent": [base / "nodata_run"]},
        "missing_recipe": {"process": False, "args": ["train", base / "nope.toml"], "expect": ["nope.toml", "not found"]},
        "prompt_char": {"args": ["sample", trained, "--prompt", "h\u00e9llo", "--max-new-tokens", "5"],
                        "expect": ["'\u00e9'", "position 1"], "no_stdout": True},
        "prompt_bytes": {"process": False, "args": ["sample", trained, "--prompt", b"ab\xffc", "--max-new-tokens", "5"],
                         "expect": ["U+DCFF", "position 2"], "no_stdout": True},  # undecodable argv bytes
        "prompt_file_char": {"process": False, "args": ["sample", trained, "--prompt-file", base / "prompt.txt"],
                             "expect": ["'\u00fc'", "position 4"], "no_stdout": True},
        "not_a_run": {"args": ["sample", base / "not_a_run"], "expect": ["not a run directory"]},
        "corrupt_checkpoint": {"args": ["sample", corrupt, "--max-new-tokens", "5"],
                               "expect": ["model-best.safetensors", "not a valid safetensors checkpoint"],
                               "no_stdout": True},
        "resume_shape": {"args": ["train", "--resume", resume, "--model.n_embd=32", "--quiet"],
                         "expect": ["model.n_embd is 16", "but 32 was asked for", "may change on resume"],
                         "unchanged": {p: p.read_bytes() for p in resume.iterdir()}},
        "resume_not_a_run": {"process": False, "args": ["train", "--resume", base / "not_a_run"], "expect": ["not a run directory"]},
        **{f"prepare_{name}": {"args": ["prepare", "text", "--input", base / f"{name}.txt", "--out", base / f"out_{name}"],
                               "expect": [{"empty": "is empty", "binary": "not UTF-8", "short": "too short"}[name]],
                               "absent": [base / f"out_{name}"]}
           for name in inputs},
    }


@pytest.fixture(scope="module")
def results(cases, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("cli_cwd")  # nothing lands in the repository's runs/ or data/
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str) -> subprocess.CompletedProcess:
        args = [a if isinstance(a, bytes) else str(a) for a in cases[name]["args"]]
        argv = [sys.executable, "-m", "scratchgpt.cli", *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)

    def run_here(name: str) -> subprocess.CompletedProcess:
        # bytes become what Python makes of undecodable argv bytes (surrogateescape)
        args = [a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else str(a) for a in cases[name]["args"]]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
            rc = cli_main(args)  # an exception escaping here (a traceback in a real run) fails the test
        return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())

    in_process = [name for name in cases if cases[name].get("process") is False]
    processes = [name for name in cases if name not in in_process]
    results = {name: run_here(name) for name in in_process}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results.update(zip(processes, pool.map(run, processes), strict=True))
    return results


CASES = ["unknown_key", "unknown_key_in_recipe", "wrong_type", "wrong_choice", "missing_data", "missing_recipe",
         "prompt_char", "prompt_bytes", "prompt_file_char", "not_a_run", "corrupt_checkpoint", "resume_shape", "resume_not_a_run",
         "prepare_empty", "prepare_binary", "prepare_short"]


def test_every_case_is_listed(cases):
    assert sorted(cases) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_and_exit_2(name, cases, results):
    case, proc = cases[name], results[name]
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for fragment in case["expect"]:
        assert fragment in lines[0], (fragment, lines[0])
    if case.get("no_stdout"):
        assert proc.stdout == ""  # it fails before printing any text
    for path in case.get("absent", []):
        assert not path.exists() or not any(path.iterdir()), f"{path} was written"
    for path, data in case.get("unchanged", {}).items():
        assert path.read_bytes() == data, f"{path.name} changed"


@pytest.mark.slow
def test_resume_refuses_a_model_change_before_building_anything(cases, results):
    line = next(line for line in results["resume_shape"].stderr.splitlines() if line.startswith("error: "))
    assert "config.json" in line and "model:" not in results["resume_shape"].stderr  # refused before the model is built


@pytest.mark.slow
def test_console_script_and_usage_errors(tmp_path):
    exe = Path(sys.executable).with_name("scratchgpt")
    if not exe.is_file():
        pytest.skip("the scratchgpt console script is not installed in this environment")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "train"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: `train` needs a recipe" in proc.stderr
    proc = subprocess.run([str(exe), "sample", str(tmp_path), "--bogus"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--bogus" in proc.stderr

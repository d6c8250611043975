"""The package as a user installs it: an sdist and a wheel built from the sources (the wheel from the sdist,
as `python -m build` does), the wheel installed into a fresh virtual environment, and then, from an empty
directory, what the README tells a user to run: prepare tiny Shakespeare, train a named recipe, sample,
list and show the recipes, a lecture run, the notebook, one's own text end to end, and /health from
`serve`. Nothing is reinstalled from an index: the new environment sees this one's packages (torch & co.)
through a .pth line, while scratchgpt itself must be the wheel's copy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import scratchgpt

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# what the build reads: pyproject.toml and setup.py say how, MANIFEST.in what else the sdist carries
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "configs", "docs/lecture/lecture.ipynb"]
TINY = ["--train.max_iters=4", "--train.eval_interval=2", "--train.eval_iters=1", "--train.batch_size=4",
        "--train.time_limit=0", "--train.schedule_by_time=false", "--train.full_val=false", "--train.device=cpu",
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=16", "--quiet"]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("source")
    for rel in SOURCES:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / rel, src / rel)
    dist = src / "dist"
    run([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(dist), "."], src,
        {**os.environ})
    (sdist,), (whl,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"configs/lecture/1_bigram.toml", "configs/chat/demo_sft.toml", "docs/lecture/lecture.ipynb"} <= names
    with zipfile.ZipFile(whl) as z:
        bundled = {n.removeprefix("scratchgpt/_bundled/") for n in z.namelist() if "/_bundled/" in n}
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.toml")}
    assert bundled == configs | {"docs/lecture/lecture.ipynb"}  # every recipe, nothing else
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment holding the wheel; this environment's packages are visible beneath it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        venv, {**os.environ})
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv,
                    {**os.environ}).strip())
    mine = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # torch, numpy, fastapi ...
    (site / "zz_test_environment.pth").write_text("".join(f"{p}\n" for p in mine), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return venv, env


@pytest.fixture
def empty(tmp_path) -> Path:
    return tmp_path


def test_the_installed_package_is_the_wheels_copy(installed, empty):
    venv, env = installed
    code = "import scratchgpt, scratchgpt.resources as r; print(scratchgpt.__file__); print(r.root())"
    where, root = run(["python", "-c", code], empty, env).split()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)
    assert Path(root) == Path(where).parent / "_bundled"
    assert run(["scratchgpt", "--version"], empty, env).strip() == f"scratchgpt {scratchgpt.__version__}"
    assert run(["python", "-m", "scratchgpt", "--version"], empty, env).strip() == f"scratchgpt {scratchgpt.__version__}"


def test_from_an_empty_directory(installed, empty, shakespeare_path):
    venv, env = installed
    env = {**env, "SCRATCHGPT_TINYSHAKESPEARE": str(shakespeare_path)}
    run(["scratchgpt", "prepare", "shakespeare_char"], empty, env)
    assert "run directory runs/shakespeare_char_cpu" in run(["scratchgpt", "train", "shakespeare_char_cpu", *TINY],
                                                             empty, env)
    text = run(["scratchgpt", "sample", "runs/shakespeare_char_cpu", "--prompt", "ROMEO:", "--max-new-tokens", "20",
                "--seed", "1"], empty, env)
    assert text.startswith("ROMEO:") and len(text) > 20
    listing = run(["scratchgpt", "recipes"], empty, env).splitlines()
    assert [ln.split()[0] for ln in listing][:1] == ["bigram"] and any(ln.startswith("lecture/1_bigram ") for ln in listing)
    assert run(["python", "-m", "scratchgpt", "recipes", "show", "chat/demo_sft"], empty, env) == \
        (REPO / "configs/chat/demo_sft.toml").read_text(encoding="utf-8")
    out = run(["scratchgpt", "lecture", "--budget", "tiny", "--quiet"], empty, env)
    assert "trained 7 of 7 steps" in out and (empty / "docs/lecture/tiny/results.md").is_file()
    run(["scratchgpt", "lecture", "--notebook", "notebook"], empty, env)
    assert (empty / "notebook/lecture.ipynb").read_bytes() == (REPO / "docs/lecture/lecture.ipynb").read_bytes()


def test_ones_own_text_end_to_end(installed, empty, shakespeare_path):
    """The README's section: tokenizer, prepare, a named recipe on that data, sample, eval."""
    venv, env = installed
    (empty / "my.txt").write_text(shakespeare_path.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    run(["scratchgpt", "tokenizer", "train", "--input", "my.txt", "--vocab-size", "300", "--out", "tok"], empty, env)
    run(["scratchgpt", "prepare", "text", "--input", "my.txt", "--tokenizer", "tok", "--out", "data/my"], empty, env)
    out = run(["scratchgpt", "train", "shakespeare_char_cpu", "--data.dir=data/my", *TINY], empty, env)
    assert "run directory runs/my_shakespeare_char_cpu" in out
    assert run(["scratchgpt", "sample", "runs/my_shakespeare_char_cpu", "--prompt", "KING", "--max-new-tokens", "8"],
               empty, env).startswith("KING")
    report = run(["scratchgpt", "eval", "runs/my_shakespeare_char_cpu", "--text", "my.txt", "--json", "--quiet"],
                 empty, env)
    assert '"bits_per_byte"' in report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health(installed, empty, small_text_dir):
    venv, env = installed
    run(["scratchgpt", "train", "shakespeare_char_cpu", f"--data.dir={small_text_dir}", "--out", "run", *TINY], empty, env)
    port = free_port()
    server = subprocess.Popen(["scratchgpt", "serve", "run", "--port", str(port)], cwd=empty, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 120, None
        while body is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.3)
        assert body is not None, server.stderr.read() if server.poll() is not None else "no answer in 120 s"
        assert json.loads(body)["status"] == "ok"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

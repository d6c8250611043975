"""benchmarks/gpu_acceptance.sh / .py without a GPU: one line and exit 2; the parsers and verdicts on the outputs
the steps really print, with step outputs faked; a step that hangs is killed; and every command the acceptance
run uses, run on the CPU with tiny sizes (--cpu-smoke: flags and parsers checked, nothing timed)."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO
from scratchgpt.bench import BenchResult, format_table

SPEC = importlib.util.spec_from_file_location("gpu_acceptance", REPO / "benchmarks" / "gpu_acceptance.py")
ACC = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_acceptance"] = ACC  # dataclasses look their module up
SPEC.loader.exec_module(ACC)


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.slow
def test_shell_script_without_a_gpu_says_so_in_one_line(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"  # an nvidia-smi that finds no device, whatever this machine has
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_acceptance.sh")], capture_output=True, text=True,
                       env=_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}"), timeout=60)
    assert "no NVIDIA GPU" in _one_line(r)


@pytest.mark.slow
def test_python_helper_without_a_gpu_says_so_in_one_line():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_acceptance.py")], capture_output=True, text=True,
                       env=_env(CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert "no CUDA GPU" in _one_line(r) and "--cpu-smoke" in r.stderr


# ---- parsers on what the steps print -------------------------------------------------------------------

def test_parsers_read_the_steps_outputs():
    assert ACC.parse_pytest("....\n6 passed, 700 deselected, 3 warnings in 95.21s (0:01:35)\n") == \
        {"passed": 6, "deselected": 700, "warning": 3}
    assert ACC.parse_pytest("F.s\n= 1 failed, 1 passed, 1 skipped, 2 errors in 3.0s =") == \
        {"failed": 1, "passed": 1, "skipped": 1, "error": 2}
    assert ACC.parse_pytest("no output") == {}

    r = BenchResult("gpt2_124m", "cuda:0", 124_475_904, 32, 1024, 1, 30, 712_345.6, 46.0, 0.451, 40 * 2**30,
                    "cuda", 10.9)
    row = ACC.parse_bench("compiling...\n" + format_table([r]) + "\n")  # the very table `scratchgpt bench` prints
    assert row["tokens/s"] == "712,346" and row["MFU"] == "45.1%" and row["batch x block x accum"] == "32 x 1024 x 1"
    assert ACC.parse_number(row["tokens/s"]) == 712_346 and ACC.parse_bench("error: out of memory") == {}

    speed = ("model gpt2: 124.44M parameters, block 1024, prompt 16 tokens, window half, torch 2.5.1, 16 CPU threads\n"
             "path      device   batch  new tokens   seconds    tokens/s  speedup\n"
             "cached    cuda         1        1000      0.71       1,402        -\n"
             "cached    cuda        64        1000      1.90      33,684        -\n")
    assert ACC.parse_generate_speed(speed) == {1: 1402.0, 64: 33684.0}

    log = ("step 750: train loss 1.3101, val loss 1.4652\nval loss 1.4652 <= 1.47 at step 750, 21.3 s after launch\n"
           "done: step 750, best val loss 1.4652, 21.3 s; run directory runs/x\n")
    hit = ACC.parse_speedrun(log, wall=23.0, target=1.47)
    assert hit == {"val": 1.4652, "step": 750, "run_clock": 21.3, "seconds": pytest.approx(23.0)}
    missed = "time limit of 30 s reached at step 1200\ndone: step 1200, best val loss 1.4913, 30.1 s; run directory x"
    assert ACC.parse_speedrun(missed, wall=31.0, target=1.47) is None

    assert ACC.peak_flops_for("NVIDIA H100 80GB HBM3") == (989e12, "H100 SXM")
    assert ACC.peak_flops_for("NVIDIA H200") == (989e12, "H200 SXM")
    assert ACC.peak_flops_for("NVIDIA H100 PCIe")[0] == 756e12
    assert ACC.peak_flops_for("Tesla T4") == (None, "unknown card")


class FakeRunner(ACC.Runner):
    """Answers each step's commands with canned output instead of running them."""

    def __init__(self, tmp_path, outputs: dict[str, tuple[int | None, str, float]]):
        super().__init__(470, tmp_path, {})
        self.outputs, self.calls = outputs, []

    def run(self, name, cmd, timeout):
        self.calls.append((name, cmd))
        rc, out, wall = self.outputs[name if name in self.outputs else name.split("_")[0]]
        return ACC.Outcome(cmd, rc, out, wall)


def test_verdicts_against_the_bars_from_faked_outputs(tmp_path):
    bench = format_table([BenchResult("gpt2_124m", "cuda:0", 124_475_904, 32, 1024, 1, 30, 700_000, 46.8, 0.44,
                                      40 * 2**30, "cuda", 10.9)])
    slow = bench.replace("700,000", "600,000")
    r = FakeRunner(tmp_path, {"bench": (0, bench, 90.0)})
    (c,) = ACC.step_bench(r, 200, 989e12, "H100 SXM")
    assert c.result == "PASS" and c.measured.startswith("700,000, MFU 44.0% of H100 SXM 989e12")
    assert "--batch-size" in r.calls[0][1] and "32" in r.calls[0][1] and "989e12" in r.calls[0][1]
    assert ACC.step_bench(FakeRunner(tmp_path, {"bench": (0, slow, 90.0)}), 200, None, "")[0].result == "FAIL"
    hung = FakeRunner(tmp_path, {"bench": (None, "compiling", 200.0)})
    (c,) = ACC.step_bench(hung, 200, None, "")
    assert c.result == "FAIL" and "timeout" in c.measured and len(hung.calls) == 1  # a hang is not retried
    oom = FakeRunner(tmp_path, {"bench": (1, "torch.OutOfMemoryError: CUDA out of memory", 30.0)})
    assert ACC.step_bench(oom, 200, None, "")[0].result == "FAIL"
    assert [cmd[cmd.index("--batch-size") + 1] for _, cmd in oom.calls] == ["32", "16"]  # batch 16 tried after 32

    speed = "cached    cuda         1        1000      1.2         833        -\ncached    cuda        64        1000      2.0      32,000        -\n"
    checks = ACC.step_decode(FakeRunner(tmp_path, {"decode_graphs": (0, speed, 20.0), "decode_eager": (0, speed, 20.0)}), 100)
    assert [c.result for c in checks] == ["FAIL", "PASS", "info", "info"]  # batch 1 under its bar of 1,000

    passed = "....\n4 passed, 650 deselected in 80.0s\n"
    assert ACC.step_pytest(FakeRunner(tmp_path, {"pytest": (0, passed, 80.0)}), 100)[0].result == "PASS"
    skipped = "4 skipped, 650 deselected in 10.0s"  # on a GPU machine a skipped gpu test is a failure
    assert ACC.step_pytest(FakeRunner(tmp_path, {"pytest": (0, skipped, 10.0)}), 100)[0].result == "FAIL"

    table = ACC.format_table(checks, ["card: NVIDIA H100 80GB HBM3"])
    lines = table.splitlines()
    assert lines[0] == "card: NVIDIA H100 80GB HBM3" and lines[2].startswith("| check ")
    assert len({len(line) for line in lines[2:]}) == 1 and lines[-1].endswith("| info   |")


def test_a_step_that_hangs_is_killed_at_its_timeout(tmp_path):
    r = ACC.Runner(470, tmp_path, _env())
    o = r.run("hang", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 3)
    assert o.rc is None and o.wall < 30 and "started" in o.output and "timeout" in o.why()
    assert (tmp_path / "hang.log").read_text().startswith("$ ")
    assert r.timeout("bench", ["speedrun", "decode"]) == 210  # the cap: the budget leaves more
    assert ACC.Runner(200, tmp_path, {}).timeout("bench", ["speedrun", "decode", "torchrun"]) < 60


@pytest.mark.slow
def test_cpu_smoke_runs_every_command_with_tiny_sizes(tmp_path, shakespeare_path):
    """The acceptance run's commands and flags, each really run on the CPU (pytest -m gpu aside: it is run by
    this very suite); the table comes last and every check ran."""
    table = tmp_path / "table.md"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_acceptance.py"), "--cpu-smoke", "--workdir",
                        str(tmp_path / "work"), "--table-file", str(table), "--only", "bench", "speedrun", "decode",
                        "torchrun"], capture_output=True, text=True, timeout=300,
                       env=_env(SCRATCHGPT_TINYSHAKESPEARE=str(shakespeare_path), OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 1 + 1 + 4 + 1 and all(row.rstrip(" |").endswith("ran") for row in rows), r.stdout
    assert r.stdout.rstrip().endswith(rows[-1]) and table.read_text().strip().endswith(rows[-1])
    assert (tmp_path / "work/torchrun/model.safetensors").is_file()

"""GPU acceptance in one command: issue 13's one-GPU bars checked on this machine, one table printed last.

    bash benchmarks/gpu_acceptance.sh                   # checks for a GPU, installs what is missing, runs this
    python benchmarks/gpu_acceptance.py                 # the same, once the package, pytest and hypothesis import
    python benchmarks/gpu_acceptance.py --only bench decode     # rerun some checks
    python benchmarks/gpu_acceptance.py --cpu-smoke     # every command with tiny sizes on the CPU: no bars, no GPU

Each step is a subprocess with its own timeout (a step that hangs is killed with its children, reported, and
the next one runs), all within --budget seconds (default 470, under 8 minutes; later steps keep a reserve):
1. pytest: the tests marked gpu (`pytest -m gpu` on the test files that have such tests); bar: all pass.
2. bench: GPT-2 124M training speed, `scratchgpt bench configs/gpt2_124m.toml` on random tokens (compile on,
   bf16, batch 32 x 1024, 16 if 32 fails): tokens/s and MFU against the card's dense bf16 peak (nvidia-smi's
   name: H100 / H200 SXM 989e12; --peak-flops overrides); bar >= 650,000 tokens/s.
3. speedrun: tiny Shakespeare char, `scratchgpt train configs/shakespeare_char_speedrun.toml`: seconds from
   launching the process to the evaluation with val <= 1.47 on the full val split (start-up included; the
   process's exit time is added too, so the figure is an upper bound); bar <= 30 s. The data comes from
   $SCRATCHGPT_TINYSHAKESPEARE, shared/ or ../shared/data/tinyshakespeare/input.txt, else the download.
4. decode: `benchmarks/generate_speed.py --device cuda --model gpt2 --batch 1 64 --no-uncached` (GPT-2 124M
   shape, bf16, 1,000 new tokens per row), with CUDA graphs and again with --no-cuda-graphs; bars with graphs:
   >= 1,000 tokens/s at batch 1, >= 30,000 at batch 64; without graphs the figures are for comparison.
5. torchrun: `torchrun --standalone --nproc_per_node 1 -m scratchgpt.cli train` of a tiny model on tiny
   Shakespeare; bar: it finishes and writes a checkpoint.
Logs of every step go to WORKDIR/logs (default runs/gpu_acceptance); the table also to --table-file (default
$OUT/gpu_acceptance.md when $OUT is set, else WORKDIR/gpu_acceptance.md), ready for docs/benchmarks.md.
WORKDIR must be new, empty or an earlier acceptance run's (scratchgpt/outputs.py's rule); its runs are replaced
as `train --force` replaces a run, never anything else.
Exit 0 when every check passes, 1 when one does not, 2 without a CUDA GPU or with a WORKDIR that is not ours
(one line on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 470.0
STEPS = ("pytest", "bench", "speedrun", "decode", "torchrun")
# (timeout cap, reserve kept for the step while earlier ones run), seconds
TIMES = {"pytest": (180, 90), "bench": (210, 90), "speedrun": (100, 60), "decode": (180, 60), "torchrun": (90, 30)}
TOKENS_BAR, SPEEDRUN_BAR, DECODE_BARS = 650_000, 30.0, {1: 1_000, 64: 30_000}
# dense (no sparsity) bf16 peaks in FLOP/s by a piece of nvidia-smi's name; the first match wins
PEAKS = [("H100 PCIe", 756e12, "H100 PCIe"), ("H100 NVL", 835e12, "H100 NVL"), ("H200 NVL", 835e12, "H200 NVL"),
         ("H100", 989e12, "H100 SXM"), ("H200", 989e12, "H200 SXM"), ("A100", 312e12, "A100")]
TINY_MODEL = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32"]
WORKDIR_ENTRIES = ("data", "speedrun", "torchrun", "logs", "gpu_acceptance.md")  # what --workdir holds


def _workdir_kind():  # imported late: --help and the no-GPU answer stay quick
    from scratchgpt.outputs import Kind, entries

    return Kind("a GPU acceptance work directory", lambda d: (d / "logs").is_dir() and all(
        p.name in WORKDIR_ENTRIES for p in entries(d)), WORKDIR_ENTRIES.__contains__)


@dataclass
class Check:
    name: str
    measured: str
    bar: str
    result: str  # PASS | FAIL | info | ran (--cpu-smoke) | not run


@dataclass
class Outcome:
    cmd: list[str]
    rc: int | None  # None: killed at its timeout
    output: str  # stdout and stderr together
    wall: float
    log: Path | None = None

    def why(self) -> str:
        """What went wrong, for the table: the timeout, or the exit code and the last line of output."""
        if self.rc is None:
            return f"killed at its {self.wall:.0f} s timeout"
        last = next((ln.strip() for ln in reversed(self.output.splitlines()) if ln.strip()), "")
        return f"exit {self.rc}: {last[:120]}"


# ---- parsing what the steps print --------------------------------------------------------------------------

def peak_flops_for(gpu_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak of a card from its nvidia-smi name, and the part it was taken for."""
    for piece, peak, part in PEAKS:
        if piece.lower() in gpu_name.lower():
            return peak, part
    return None, "unknown card"


def parse_pytest(output: str) -> dict[str, int]:
    """Counts from pytest's summary line: {'passed': 5, 'skipped': 1, 'deselected': 12, ...}."""
    lines = [ln for ln in output.splitlines() if re.search(r"\b(passed|failed|skipped|deselected|error|no tests ran)\b", ln)]
    if not lines:
        return {}
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)", lines[-1]):
        counts[what.rstrip("s") if what.startswith(("error", "warning")) else what] = int(n)
    return counts


def parse_bench(output: str) -> dict[str, str]:
    """The row of `scratchgpt bench`'s table as {column: value} (the table's header starts with 'config')."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("config") and "tokens/s" in line and i + 2 < len(lines):
            head = [c.strip() for c in line.split(" | ")]
            row = [c.strip() for c in lines[i + 2].split(" | ")]
            if len(row) == len(head):
                return dict(zip(head, row, strict=True))
    return {}


def flops_text(peak: float) -> str:
    return f"{peak / 1e12:g}e12"  # 989e12, as the docs and nvidia's sheets write it


def parse_number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def parse_generate_speed(output: str) -> dict[int, float]:
    """{batch: tokens/s} of the cached rows of benchmarks/generate_speed.py's table."""
    rows = re.findall(r"^cached\s+\S+\s+(\d+)\s+\d+\s+[\d.]+\s+([\d,]+)", output, flags=re.M)
    return {int(b): parse_number(tps) for b, tps in rows}


def parse_speedrun(output: str, wall: float, target: float) -> dict[str, float] | None:
    """From the train command's log: the val loss that met the target, its step and the seconds from launch.

    The run reports seconds since its own start (`main()`); the process's start-up before that and its exit
    after the `done:` line are added (wall - the run's own total), so the figure is an upper bound."""
    hit = re.search(rf"val loss ([\d.]+) <= {re.escape(f'{target:g}')} at step (\d+), ([\d.]+) s after launch", output)
    done = re.search(r"done: step (\d+), best val loss ([\d.]+|nan|inf), ([\d.]+) s", output)
    if not hit:
        return None
    overhead = max(0.0, wall - float(done.group(3))) if done else 0.0
    return {"val": float(hit.group(1)), "step": int(hit.group(2)), "run_clock": float(hit.group(3)),
            "seconds": float(hit.group(3)) + overhead}


def format_table(checks: list[Check], header: list[str]) -> str:
    """Markdown: the machine lines, then check | measured | bar | result."""
    rows = [["check", "measured", "bar", "result"]] + [[c.name, c.measured, c.bar, c.result] for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    table = [line(rows[0]), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in rows[1:]]
    return "\n".join(header + [""] + table)


# ---- running steps -----------------------------------------------------------------------------------------

@dataclass
class Runner:
    budget: float
    logs: Path
    env: dict[str, str]
    smoke: bool = False
    start: float = field(default_factory=time.time)

    def timeout(self, step: str, later: list[str]) -> float:
        """The step's cap, or less: what the budget leaves after the reserves of the steps still to come."""
        left = self.budget - (time.time() - self.start) - sum(TIMES[s][1] for s in later)
        return min(TIMES[step][0], left)

    def run(self, name: str, cmd: list[str], timeout: float) -> Outcome:
        """Run cmd in its own process group; at the timeout the whole group is killed."""
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our child's group: torchrun's workers, pytest's subprocesses
            out, _ = proc.communicate()
            rc = None
        o = Outcome(cmd, rc, out, time.time() - t0, self.logs / f"{name}.log")
        o.log.write_text(f"$ {shlex.join(cmd)}\n# exit {rc}, {o.wall:.1f} s\n{out}", encoding="utf-8")
        return o


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def step_pytest(r: Runner, timeout: float) -> list[Check]:
    files = gpu_test_files()
    o = r.run("pytest", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files], timeout)
    c = parse_pytest(o.output)
    counts = ", ".join(f"{n} {k}" for k, n in c.items() if k not in ("deselected", "warning")) or o.why()
    # on a GPU every test marked gpu runs (none may skip); on a CPU they all skip
    ok = o.rc == 0 and (r.smoke or (c.get("passed", 0) > 0 and not c.get("skipped")))
    return [Check(f"pytest -m gpu ({len(files)} files)", f"{counts} in {o.wall:.0f} s", "all pass, none skipped",
                  verdict(r, ok))]


def verdict(r: Runner, ok: bool, info: bool = False) -> str:
    if not ok:
        return "FAIL"
    return "ran" if r.smoke else ("info" if info else "PASS")


def step_bench(r: Runner, timeout: float, peak: float | None, part: str) -> list[Check]:
    base = [sys.executable, "-m", "scratchgpt.cli", "bench", "configs/gpt2_124m.toml", "--train.grad_accum_steps=1"]
    if r.smoke:
        tries = [base + ["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                         "--train.compile=false", "--train.dtype=float32", "--train.threads=1", *TINY_MODEL]]
    else:
        tries = [base + ["--device", "cuda", "--batch-size", str(b), "--steps", "30", "--warmup", "10"] for b in (32, 16)]
    deadline = time.time() + timeout
    for cmd in tries:
        cmd = cmd + (["--peak-flops", flops_text(peak)] if peak else [])
        o = r.run(f"bench_batch{cmd[cmd.index('--batch-size') + 1]}", cmd, max(1.0, deadline - time.time()))
        row = parse_bench(o.output)
        if o.rc == 0 and row:
            break
        if o.rc is None or time.time() > deadline - 60:  # batch 16 compiles again: only after a quick failure
            break
    if not (o.rc == 0 and row):
        return [Check("GPT-2 124M training tokens/s (bench)", o.why(), f">= {TOKENS_BAR:,}", "FAIL")]
    tps = parse_number(row["tokens/s"])
    mfu = f", MFU {row['MFU']} of {part} {flops_text(peak)}" if peak else ", MFU n/a (unknown card: pass --peak-flops)"
    return [Check(f"GPT-2 124M training tokens/s (bench, {row['batch x block x accum']}, compile, bf16)",
                  f"{tps:,.0f}{mfu}, {row['peak memory']}", f">= {TOKENS_BAR:,}",
                  verdict(r, r.smoke or tps >= TOKENS_BAR))]


def shakespeare_input() -> str | None:
    for p in (os.environ.get("SCRATCHGPT_TINYSHAKESPEARE"), REPO / "shared/data/tinyshakespeare/input.txt",
              REPO.parent / "shared/data/tinyshakespeare/input.txt"):
        if p and Path(p).is_file():
            return str(p)
    return None  # prepare downloads it


def step_speedrun(r: Runner, timeout: float, work: Path) -> list[Check]:
    name, bar = "tiny Shakespeare launch to val <= 1.47 (speedrun recipe)", f"<= {SPEEDRUN_BAR:g} s"
    data, run_dir = work / "data/shakespeare_char", work / "speedrun"
    src = shakespeare_input()
    prep = [sys.executable, "-m", "scratchgpt.cli", "prepare", "shakespeare_char", "--out", str(data)]
    t0 = time.time()
    o = r.run("prepare", prep + (["--input", src] if src else []), min(60.0, timeout))
    if o.rc != 0:
        return [Check(name, f"prepare failed: {o.why()}", bar, "FAIL")]
    cmd = [sys.executable, "-m", "scratchgpt.cli", "train", "configs/shakespeare_char_speedrun.toml", "--quiet",
           "--out", str(run_dir), "--force", f"--data.dir={data}"]  # --force: the last acceptance run's, never more
    target = 1.47
    if r.smoke:  # a tiny model that "reaches" a loose target at its first evaluation
        target = 10.0
        cmd += ["--train.device=cpu", "--train.threads=1", "--train.max_iters=4", "--train.eval_interval=2",
                "--train.batch_size=4", "--train.full_val=false", "--train.eval_iters=1", "--train.eval_batch_size=8",
                f"--train.stop_val_loss={target}", *TINY_MODEL]
    o = r.run("speedrun", cmd, max(1.0, timeout - (time.time() - t0)))
    hit = parse_speedrun(o.output, o.wall, target)
    if hit is None:
        best = re.search(r"best val loss ([\d.]+)", o.output)
        got = f"val {target} not reached (best {best.group(1)}) in {o.wall:.1f} s" if best else o.why()
        return [Check(name, got, bar, "FAIL")]
    measured = (f"{hit['seconds']:.1f} s (val {hit['val']:.4f} at step {hit['step']}: {hit['run_clock']:.1f} s on the "
                f"run's clock + {hit['seconds'] - hit['run_clock']:.1f} s process start-up and exit)")
    return [Check(name, measured, bar, verdict(r, r.smoke or hit["seconds"] <= SPEEDRUN_BAR))]


def step_decode(r: Runner, timeout: float) -> list[Check]:
    checks, deadline = [], time.time() + timeout
    base = [sys.executable, "benchmarks/generate_speed.py", "--no-uncached"]
    base += (["--device", "cpu", "--model", "char", "--batch", "1", "2", "--new-tokens", "10", "--threads", "1"] if r.smoke
             else ["--device", "cuda", "--model", "gpt2", "--batch", "1", "64"])
    for graphs in (True, False):
        label = "CUDA graphs" if graphs else "no CUDA graphs"
        o = r.run(f"decode_{'graphs' if graphs else 'eager'}", base + ([] if graphs else ["--no-cuda-graphs"]),
                  max(1.0, (deadline - time.time()) / (2 if graphs else 1)))
        speeds = parse_generate_speed(o.output)
        for batch, bar in DECODE_BARS.items():
            b = {64: 2}.get(batch, batch) if r.smoke else batch
            name = f"decode GPT-2 124M tokens/s, batch {batch}, {label}"
            if o.rc != 0 or b not in speeds:
                checks.append(Check(name, o.why() if o.rc != 0 else "no figure in the output", f">= {bar:,}", "FAIL"))
            elif graphs:
                checks.append(Check(name, f"{speeds[b]:,.0f}", f">= {bar:,}", verdict(r, r.smoke or speeds[b] >= bar)))
            else:
                checks.append(Check(name, f"{speeds[b]:,.0f}", "(what graphs buy)", verdict(r, True, info=True)))
    return checks


def step_torchrun(r: Runner, timeout: float, work: Path) -> list[Check]:
    name, bar = "torchrun, 1 GPU: tiny model trains and saves", "exit 0, checkpoint written"
    data, out = work / "data/shakespeare_char", work / "torchrun"
    if not (data / "meta.json").is_file():
        return [Check(name, "not run: no prepared data (the speedrun step prepares it)", bar, "FAIL")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "scratchgpt.cli", "train", "configs/shakespeare_char.toml", "--quiet", "--out", str(out), "--force",
           f"--data.dir={data}", "--train.max_iters=20", "--train.eval_interval=10", "--train.eval_iters=2",
           "--train.batch_size=8", "--train.compile=false", *TINY_MODEL]
    if r.smoke:
        cmd += ["--train.device=cpu", "--train.threads=1", "--train.max_iters=2", "--train.eval_interval=2"]
    o = r.run("torchrun", cmd, timeout)
    saved = all((out / f).is_file() for f in ("model.safetensors", "trainer_state.safetensors"))
    done = re.search(r"done: step (\d+)", o.output)
    if o.rc == 0 and saved and done:
        return [Check(name, f"step {done.group(1)}, checkpoint in {o.wall:.0f} s", bar, verdict(r, True))]
    return [Check(name, o.why() if o.rc != 0 else "no checkpoint written", bar, "FAIL")]


# ---- the machine and main ----------------------------------------------------------------------------------

def nvidia_smi() -> tuple[str, str, str]:
    """(name, driver, memory) of GPU 0 from nvidia-smi, or empty strings."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
        name, driver, mem = (x.strip() for x in out.splitlines()[0].split(","))
        return name, driver, mem
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return "", "", ""


def machine_lines(torch, card: tuple[str, str, str], peak_note: str) -> list[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    name, driver, mem = card
    return [f"GPU acceptance, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}",
            f"card: {name or 'none'} ({mem or '?'}), driver {driver or '?'}, CUDA {torch.version.cuda or 'none'}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
            f"MFU peak: {peak_note}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="run these checks only")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything (default 470)")
    ap.add_argument("--peak-flops", type=float, default=None, help="the card's dense bf16 peak (default: by name)")
    ap.add_argument("--workdir", default="runs/gpu_acceptance", help="data, runs and logs (relative to the repo)")
    ap.add_argument("--table-file", default=None, help="where the table goes too (default $OUT/gpu_acceptance.md "
                    "when $OUT is set, else WORKDIR/gpu_acceptance.md)")
    ap.add_argument("--cpu-smoke", action="store_true", help="every command with tiny sizes on the CPU, no bars")
    args = ap.parse_args(argv)

    import torch  # after argument parsing: --help stays quick

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_acceptance: no CUDA GPU visible to torch {torch.__version__}; the acceptance run needs one "
              "H100 or H200 (or use --cpu-smoke to check the commands on a CPU)", file=sys.stderr)
        return 2
    card = nvidia_smi() if not args.cpu_smoke else ("", "", "")
    peak, part = (args.peak_flops, "given") if args.peak_flops else peak_flops_for(card[0])
    peak_note = f"{flops_text(peak)} FLOP/s ({part}, dense bf16)" if peak else "unknown card: no MFU (pass --peak-flops)"
    work = (REPO / args.workdir).resolve()
    sys.path.insert(0, str(REPO / "src"))  # the package the steps run (their PYTHONPATH)
    from scratchgpt.errors import UserError
    from scratchgpt.outputs import claim

    try:  # the one rule for output directories (scratchgpt/outputs.py): never into a directory not ours
        claim(work, _workdir_kind(), "gpu_acceptance.py", flag="--workdir")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if args.cpu_smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    r = Runner(args.budget, logs, env, smoke=args.cpu_smoke)
    header = machine_lines(torch, card, peak_note)
    if args.cpu_smoke:
        header.append("CPU SMOKE RUN: every command with tiny sizes on the CPU; the figures mean nothing, no bar applies")
    print("\n".join(header), flush=True)
    todo = [s for s in STEPS if s in args.only]
    checks: list[Check] = []
    for i, step in enumerate(todo):
        timeout = r.timeout(step, todo[i + 1:])
        if timeout < 10:
            checks.append(Check(step, "not run: the time budget was spent", "-", "not run"))
            continue
        print(f"[{i + 1}/{len(todo)}] {step} (up to {timeout:.0f} s) ...", flush=True)
        t0 = time.time()
        try:
            if step == "pytest":
                got = step_pytest(r, timeout)
            elif step == "bench":
                got = step_bench(r, timeout, peak, part)
            elif step == "speedrun":
                got = step_speedrun(r, timeout, work)
            elif step == "decode":
                got = step_decode(r, timeout)
            else:
                got = step_torchrun(r, timeout, work)
        except Exception as e:  # a surprise in this script must not cost the other checks or the table
            got = [Check(step, f"gpu_acceptance.py failed: {type(e).__name__}: {e}"[:200], "-", "FAIL")]
        checks += got
        print(f"    {', '.join(c.result for c in got)} in {time.time() - t0:.0f} s (logs in {logs})", flush=True)
    table = format_table(checks, header + [f"total {time.time() - r.start:.0f} s of a {args.budget:.0f} s budget"])
    dest = Path(args.table_file) if args.table_file else (Path(os.environ["OUT"]) if os.environ.get("OUT") else work) / "gpu_acceptance.md"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(table + "\n", encoding="utf-8")
        if os.environ.get("OUT") and not args.table_file:
            shutil.copytree(logs, Path(os.environ["OUT"]) / "gpu_acceptance_logs", dirs_exist_ok=True)
    except OSError as e:
        print(f"note: could not write {dest}: {e.strerror}", file=sys.stderr)
    print("\n" + table)
    return 0 if all(c.result in ("PASS", "info", "ran") for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The lecture, replayed: train its seven steps in order and write down what each one measured.

Owns the list of steps (one recipe each under `configs/lecture/`, shipped in the package), the budgets
(per-step overrides: `gpu` is the lecture's own sizes, `cpu` fits a 2-core CPU, `tiny` is for tests), knowing
which steps are already done (a finished step is never trained again; an interrupted one resumes exactly),
writing `results.md` and `progression.png`, and handing out the lecture notebook (`--notebook DIR`). Does not
own training (`train.py`), sampling (`generate.py`), the model's switches (`models/gpt.py`) or the recipes'
contents.

    runs/lecture/<budget>/<step>/   a run directory per step, plus `lecture.json`: the finished marker,
                                    holding the step's measured numbers and its 200-character sample

`--runs` must be new, empty or the lecture's (`outputs.claim`: directories of step directories); a stale
step's run is replaced as `train --force` replaces one, never anything that is not a run.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import LEGACY, Config, load_recipe, to_dict
from .console import echo
from .data import load_meta
from .errors import UserError
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from .generate import generate
from .outputs import LECTURE, claim
from .plots import pyplot, save_figure
from .resources import shipped
from .runtime import resolve_device, set_threads
from .schema import Int, read_json
from .train import train

MARKER = "lecture.json"
NOTEBOOK = "docs/lecture/lecture.ipynb"  # the lecture as a notebook, shipped (`write_notebook`)
# a finished step's marker, as results.md and the plot read it (schema.py); a damaged one is not finished
STEP_MARKER = {"step": str, "config": dict, "iters": Int(0), "params": Int(0), "train_loss": float,
               "val_loss": float, "seconds": float, "cpu_seconds": float, "sample": str, "machine": str, "date": str}
SAMPLE_CHARS, SAMPLE_SEED = 200, 1337


@dataclass(frozen=True)
class Step:
    name: str  # recipe stem under configs/lecture/ and run directory name
    label: str  # short, for the plot's axis
    title: str  # what the step adds
    lecture_val: float | None = None  # the val loss the lecture reports, where it states one


STEPS: tuple[Step, ...] = (
    Step("1_bigram", "1 bigram", "bigram: token embedding straight to logits", 2.5),
    Step("2_self_attention", "2 +1 head", "+ position embedding and one self-attention head"),
    Step("3_multi_head", "3 4 heads", "multi-head attention (4 heads of 8, concatenated)"),
    Step("4_feed_forward", "4 +MLP", "+ feed-forward MLP (ReLU)"),
    Step("5_residual", "5 +residual", "+ residual connections with projections, 3 blocks"),
    Step("6_layernorm", "6 +LayerNorm", "+ LayerNorm (pre-norm) and a final LayerNorm"),
    Step("7_scaled_up", "7 scaled up", "+ dropout 0.2, scaled up (6 layers / 6 heads / 384 wide, block 256)", 1.48),
)

_ONE_THREAD = ["--train.threads=1"]  # models this small run faster on one core than split across two
_TINY = ["--train.max_iters=4", "--train.eval_interval=2", "--train.eval_iters=1", "--train.batch_size=2",
         "--train.log_interval=1", "--train.threads=1"]

# Overrides applied on top of each step's recipe. The recipes hold the lecture's own sizes.
BUDGETS: dict[str, dict[str, list[str]]] = {
    "gpu": {},
    # Steps 1-6 run at the lecture's sizes; step 7 is shrunk to fit ~10 minutes of a 2-core CPU: half the
    # width (192, so head size 32), half the context (128), a quarter of the batch (16), 1000 iterations at
    # the smaller model's learning rate 1e-3. Same depth, heads, dropout and architecture.
    "cpu": {**{s.name: _ONE_THREAD for s in STEPS[:6]},
            "7_scaled_up": ["--model.n_embd=192", "--model.block_size=128", "--train.batch_size=16",
                            "--train.max_iters=1000", "--train.learning_rate=1e-3", "--train.eval_interval=250",
                            "--train.eval_iters=50"]},
    "tiny": {**{s.name: _TINY for s in STEPS[:6]},
             "7_scaled_up": _TINY + ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=16",
                                     "--model.block_size=16"]},
}
PUBLIC_BUDGETS = ("cpu", "gpu")

# Settings that say where or how long a step runs, not what it computes: they do not make a finished step
# stale, and a run stopped early (time limit, Ctrl-C) resumes from where it stopped.
_WHERE = ("device", "threads", "out_dir", "time_limit")


@dataclass
class LectureReport:
    results: list[dict[str, Any]]  # one marker per step, in order
    trained: list[str]  # the steps this call trained (or resumed)
    results_path: Path
    plot_path: Path
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


def recipes_dir() -> Path:
    """configs/lecture/ as the package ships it (`resources.py`: a wheel's copy, or a clone's own)."""
    return shipped("configs/lecture")


def write_notebook(directory: str | Path) -> Path:
    """The lecture notebook (docs/lecture/lecture.ipynb, outputs included) written to directory/lecture.ipynb.
    A file already there is left alone: the same notebook is nothing to do, another one is refused."""
    content = shipped(NOTEBOOK).read_bytes()
    dest = Path(directory) / Path(NOTEBOOK).name
    if dest.is_file() and dest.read_bytes() == content:
        return dest
    if dest.exists() or dest.is_symlink():
        raise UserError(f"'{dest}' already exists and is not this package's notebook; move it away or choose "
                        "another directory (it is never overwritten)")
    atomic_write_bytes(dest, content)
    return dest


def default_docs_dir(budget: str) -> Path:
    return Path("docs/lecture") if budget == "cpu" else Path("docs/lecture") / budget


def step_config(step: Step, budget: str, device: str, data_dir: str | Path | None = None,
                recipes: Path | None = None) -> Config:
    """The step's recipe with the budget's overrides, the device and (optionally) another data directory."""
    overrides = list(BUDGETS[budget].get(step.name, [])) + [f"--train.device={device}"]
    if data_dir is not None:
        overrides.append(f"--data.dir={data_dir}")
    return load_recipe((recipes or recipes_dir()) / f"{step.name}.toml", overrides)


def identity_of(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """What a run computes: the resolved config without where it runs, through JSON so types compare."""
    d = json.loads(json.dumps(cfg_dict))
    d.pop("name", None)
    for key in _WHERE:
        d.get("train", {}).pop(key, None)
    return d


def same_run(old: Any, new: dict[str, Any]) -> bool:
    """Whether a run recorded with identity `old` computes what `new` asks for.

    A setting added to the code since `old` was written counts as the same when `new` leaves it at its
    default (so a new option does not make every finished step stale); one since removed is ignored; one
    whose values have changed form (`config.LEGACY`: model.bias was a bool) is read in its new form.
    """
    if not isinstance(old, dict):
        return False
    defaults = identity_of(to_dict(Config()))
    for section, values in new.items():
        before = old.get(section)
        if not isinstance(before, dict):
            return False
        missing = object()
        for key, value in values.items():
            expected = before.get(key, defaults.get(section, {}).get(key, missing))
            if isinstance(expected, bool) and f"{section}.{key}" in LEGACY:
                expected = LEGACY[f"{section}.{key}"][expected]
            if expected != value:
                return False
    return True


def _run_identity(run_dir: Path) -> dict[str, Any] | None:
    try:
        return identity_of(json.loads((run_dir / ckpt.CONFIG).read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trained_step(run_dir: Path) -> int:
    """The step of the run's checkpoint (from the trainer state resume reads, not its readable copy), or -1."""
    try:
        return int(ckpt.read_trainer_info(run_dir)["step"])
    except (UserError, KeyError, TypeError, ValueError):
        return -1


def _finished(run_dir: Path, identity: dict[str, Any], max_iters: int) -> dict[str, Any] | None:
    """The step's marker if it finished with this very config (the marker's and the run's), else None."""
    try:
        marker = read_json(run_dir / MARKER, f"'{run_dir / MARKER}' is damaged", spec=STEP_MARKER)
    except UserError:  # missing or damaged: the step is trained again
        return None
    if (not same_run(marker.get("config"), identity)
            or not same_run(_run_identity(run_dir), identity) or _trained_step(run_dir) < max_iters):
        return None
    return marker


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return text


def _train_step(step: Step, cfg: Config, run_dir: Path, identity: dict[str, Any], device: torch.device,
                progress: bool) -> dict[str, Any]:
    """Train (or resume) one step, sample from it, and write its marker (a stale one stays until then: `_finished`
    checks the run's own config too)."""
    marker = run_dir / MARKER
    resume = run_dir if same_run(_run_identity(run_dir), identity) and 0 <= _trained_step(run_dir) else None
    prior = 0.0
    if resume is not None:
        prior = float(ckpt.read_trainer_info(run_dir).get("elapsed", 0.0))
        echo(f"resuming {step.name} from step {_trained_step(run_dir)}")
    wall, cpu = time.time(), time.process_time()
    if _trained_step(run_dir) < cfg.train.max_iters or resume is None:
        train(cfg, out_dir=run_dir, resume=resume, progress=progress, force=resume is None)  # a stale step goes
    wall, cpu = time.time() - wall + prior, time.process_time() - cpu
    state = ckpt.read_trainer_info(run_dir)
    model, tok, _ = ckpt.load_model(run_dir, which="last", device=device)
    sample = generate(model, tok, "", max_new_tokens=SAMPLE_CHARS, temperature=1.0, seed=SAMPLE_SEED)
    result = {
        "step": step.name, "title": step.title, "config": identity, "iters": int(state["step"]),
        "params": sum(p.numel() for p in model.parameters()),  # all of them, as the lecture counts
        "train_loss": float(state["last_eval"]["train"]), "val_loss": float(state["last_eval"]["val"]),
        "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "resumed": resume is not None,
        "sample": sample, "machine": machine_description(device), "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(marker, result)
    return result


def run_lecture(budget: str = "cpu", device: str = "auto", data_dir: str | Path | None = None,
                runs_dir: str | Path = "runs/lecture", docs_dir: str | Path | None = None,
                progress: bool = True) -> LectureReport:
    """Train every step not yet done, in the lecture's order, then write results.md and progression.png."""
    if budget not in BUDGETS:
        raise UserError(f"budget must be one of {', '.join(PUBLIC_BUDGETS)}, got {budget!r}")
    claim(runs_dir, LECTURE, "lecture", flag="--runs")  # each step's run then goes through train's own claim
    start = time.time()
    recipes = recipes_dir()
    dev = resolve_device(device)
    if budget == "gpu" and device == "auto" and dev.type == "cpu":
        raise UserError("the gpu budget trains the lecture's full-size model (10.8M parameters, 5000 steps of 64 x 256 "
                        "tokens), many hours on a CPU, and no GPU was found; use --budget cpu, or --device cpu to "
                        "run it on the CPU anyway")
    threads = torch.get_num_threads()
    results, trained, skipped = [], [], []
    for i, step in enumerate(STEPS, 1):
        cfg = step_config(step, budget, device, data_dir, recipes)
        meta = load_meta(cfg.data.dir)  # a missing data directory is one sentence naming `scratchgpt prepare`
        cfg = ckpt.resolved_model_config(cfg, meta["vocab_size"])
        identity = identity_of(to_dict(cfg))
        run_dir = Path(runs_dir) / budget / step.name
        done = _finished(run_dir, identity, cfg.train.max_iters)
        if done is not None:
            echo(f"[lecture {i}/{len(STEPS)}] {step.name}: already trained, val loss {done['val_loss']:.4f}")
            results.append(done)
            skipped.append(step.name)
            continue
        echo(f"[lecture {i}/{len(STEPS)}] {step.name}: {step.title} ({budget} budget)")
        set_threads(threads)  # a step that asked for one thread must not slow the next one down
        results.append(_train_step(step, cfg, run_dir, identity, dev, progress))
        trained.append(step.name)
        echo(f"[lecture {i}/{len(STEPS)}] {step.name}: val loss {results[-1]['val_loss']:.4f} "
             f"in {results[-1]['seconds']:.0f} s")
    set_threads(threads)
    docs = Path(docs_dir) if docs_dir is not None else default_docs_dir(budget)
    report = LectureReport(results, trained, docs / "results.md", docs / "progression.png",
                           time.time() - start, skipped)
    atomic_write_text(report.results_path, results_markdown(results, budget))
    plot_progression(results, report.plot_path, budget)
    echo(f"wrote {report.results_path} and {report.plot_path}")
    return report


# ---- writing it down -------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """Sample text as one Markdown table cell: HTML-escaped, pipes escaped, newlines as <br>."""
    return html.escape(text, quote=False).replace("|", "&#124;").replace("\n", "<br>")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def results_markdown(results: list[dict[str, Any]], budget: str) -> str:
    by_name = {s.name: s for s in STEPS}
    total = sum(r["seconds"] for r in results)
    machines = sorted({r["machine"] for r in results})
    dates = sorted({r["date"] for r in results})
    lines = [
        f"# The lecture, replayed: results ({budget} budget)",
        "",
        f"Written by `scratchgpt lecture --budget {budget}` (src/scratchgpt/lecture.py). Measured on "
        f"{'; '.join(machines)}; {', '.join(dates)}. Training time, all steps: {_duration(total)}.",
        "Losses are the last evaluation of each run (mean cross-entropy over `eval_iters` random batches per split);",
        "`lecture` is the val loss the lecture reports where it states one. Parameters count every tensor",
        "(position embeddings included, as the lecture counts). Time is wall-clock; CPU time sums all threads.",
        f"Samples: {SAMPLE_CHARS} characters from the last weights, temperature 1, seed {SAMPLE_SEED}, starting "
        "from a newline.",
        "",
        "| step | parameters | iters | train loss | val loss | lecture | time | CPU time | sample |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ref = by_name[r["step"]].lecture_val if r["step"] in by_name else None
        lines.append(
            f"| {r['step']} | {r['params']:,} | {r['iters']:,} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
            f"{'' if ref is None else f'~{ref:g}'} | {_duration(r['seconds'])} | {_duration(r['cpu_seconds'])} | "
            f"{_cell(r['sample'])} |"
        )
    lines += ["", "## What the budget changed", ""]
    changes = BUDGETS.get(budget, {})
    if not any(changes.values()):
        lines.append("Nothing: every step ran its recipe under `configs/lecture/` as written (the lecture's sizes).")
    for r in results:
        over = [o[2:] for o in changes.get(r["step"], []) if not o.startswith("--train.threads")]
        if over:
            lines.append(f"- `{r['step']}`: " + ", ".join(f"`{o}`" for o in over))
    if any(changes.values()):
        lines.append("- every other setting: as in `configs/lecture/<step>.toml` (the lecture's sizes)")
    return "\n".join(lines) + "\n"


def plot_progression(results: list[dict[str, Any]], png_path: str | Path, budget: str) -> None:
    """Val (and train) loss per step, with the lecture's reported values beside ours."""
    by_name = {s.name: s for s in STEPS}
    xs = list(range(1, len(results) + 1))
    fig, ax = pyplot().subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(xs, [r["train_loss"] for r in results], "s--", color="tab:blue", alpha=0.5, label="train (ours)")
    ax.plot(xs, [r["val_loss"] for r in results], "o-", color="tab:orange", label=f"val (ours, {budget} budget)")
    for x, r in zip(xs, results, strict=True):
        ax.annotate(f"{r['val_loss']:.2f}", (x, r["val_loss"]), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8, color="tab:orange")
    refs = [(x, by_name[r["step"]].lecture_val) for x, r in zip(xs, results, strict=True)
            if r["step"] in by_name and by_name[r["step"]].lecture_val is not None]
    if refs:
        ax.plot(*zip(*refs, strict=True), "X", color="tab:red", markersize=10, linestyle="none",
                label="val (the lecture, as reported)")
        for x, ref in refs:
            ax.annotate(f"{ref:g}", (x, ref), textcoords="offset points", xytext=(10, -3), fontsize=8,
                        color="tab:red")
    ax.set_xticks(xs, [by_name[r["step"]].label if r["step"] in by_name else r["step"] for r in results])
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Let's build GPT, step by step")
    save_figure(fig, ax, png_path)

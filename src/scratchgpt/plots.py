"""Plots people would rather look at than logs: the loss curve of a run.

Owns `plot_loss(metrics_path, png_path)`, reading `metrics.jsonl` and writing a PNG atomically with
matplotlib's non-interactive backend, and the two helpers other figures share (`pyplot`, `save_figure`; the
lecture's progression uses them). Does not own the metrics format (see `train.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .fileio import atomic_path


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics log. The log is optional: a line that is cut (a crash mid-append), not UTF-8 or
    not a JSON object is skipped, and an unreadable file reads as empty."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    rows = []
    for line in raw.splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError too
            continue  # a line cut by a crash; the rest is still good
        if isinstance(row, dict) and isinstance(row.get("step", 0), int):
            rows.append(row)
    return rows


def _numbers(row: dict, *keys: str) -> bool:
    return all(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for k in keys)


def pyplot():
    """matplotlib.pyplot on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, ax, png_path: str | Path) -> None:
    """Grid and legend, then write the PNG atomically and close the figure."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)


def plot_loss(metrics_path: str | Path, png_path: str | Path, title: str = "") -> None:
    plt = pyplot()
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and _numbers(r, "step", "loss")]
    evals = [r for r in rows if r.get("kind") == "eval" and _numbers(r, "step", "train_loss", "val_loss")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", alpha=0.35, lw=1, label="train (batch)")
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["train_loss"] for r in evals], "o-", color="tab:blue", label="train (eval)")
        ax.plot(steps, [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "loss")
    save_figure(fig, ax, png_path)

"""Who may write into a run directory, and what a resumed run may change.

Owns `check_target` (where a new run may write: `outputs.claim`'s rule for a run, so never into another
run's directory unless told to replace it, nor into anything that is not a run) and `check_resume`
(`--resume` keeps the run's tokenizer and model: it refuses, naming the key and both values, a data
directory prepared with another tokenizer or a change to any key that decides the weights or the
optimizer state). Does not write anything but leftovers of dead processes (`fileio.clean_stale`); writing
the run directory is `writer.py`'s.

A directory holds a run when it has a `config.json`. A run's first checkpoint writes its `config.json` last,
after its weights and trainer state, so a directory without one holds no run: at most what a run killed
before its first complete checkpoint left, which the next run into it replaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt
from .. import outputs
from ..config import Config, to_dict
from ..data import load_meta
from ..errors import UserError
from ..fileio import clean_stale
from ..outputs import RUN_FILES
from ..tokenizers import tokenizer_from_json

# Model keys a resume may change: they do not change the weights' shapes or the function the weights compute
# at evaluation (dropout acts in training only; both attention paths compute softmax(QK^T / sqrt(d)) V).
RESUME_MODEL_KEYS = ("dropout", "attention")
# Train keys a resume may not change: the optimizer state restored from the checkpoint holds them (its
# param_groups would silently win), or they seed what makes successive evaluations comparable.
FIXED_TRAIN_KEYS = ("optimizer", "beta1", "beta2", "weight_decay", "muon_momentum", "seed")


def holds_run(directory: str | Path) -> bool:
    return (Path(directory) / ckpt.CONFIG).exists()


def clean_leftovers(run_dir: Path) -> None:
    """Remove what killed writers of this run directory left: a `--force` run's staging beside it, temp files
    of its files inside it (only those of processes that are no longer alive)."""
    clean_stale(run_dir)
    if run_dir.is_dir():
        for name in RUN_FILES:
            clean_stale(run_dir / name)


def check_target(run_dir: Path, force: bool) -> bool:
    """Whether a new run into run_dir replaces an existing run (only with force; refused without). A directory
    that holds anything but a run, or what a run killed before its first checkpoint left, is refused."""
    clean_leftovers(run_dir)
    held = (f"'{run_dir}' already holds a run; continue it with `scratchgpt train --resume {run_dir}`, pass --out "
            "to start the new run elsewhere, or --force to replace it (the old run stays until the new one's first "
            "checkpoint)")
    return outputs.claim(run_dir, outputs.RUN, "train", force=force, held=held).replaces


def check_resume(cfg: Config, run_dir: str | Path) -> None:
    """Refuse to resume run_dir with a config or data that would change what its weights mean."""
    run = Path(run_dir)
    clean_leftovers(run)
    stored = ckpt.read_config(run)  # one sentence when it is not a run directory or config.json is damaged
    # config.json against the trainer state's header, before any model is built or memory allocated
    ckpt.check_weights_file(stored.model, run / ckpt.STATE, run / ckpt.CONFIG, prefix="model.")
    _check_tokenizer(run, cfg.data.dir)
    cfg = ckpt.resolved_model_config(cfg, int(load_meta(cfg.data.dir)["vocab_size"]))
    old, new = to_dict(stored), to_dict(cfg)
    where = run / ckpt.CONFIG
    for key, was in old["model"].items():
        now = new["model"][key]
        if now != was and key not in RESUME_MODEL_KEYS:
            raise UserError(f"--resume keeps the run's model, and model.{key} is {_show(was)} in '{where}' but "
                            f"{_show(now)} was asked for; only model.{' and model.'.join(RESUME_MODEL_KEYS)} may "
                            "change on resume (start a new run to change the model)")
    for key in FIXED_TRAIN_KEYS:
        was, now = old["train"][key], new["train"][key]
        if now != was:
            raise UserError(f"train.{key} is {_show(was)} in '{where}' but {_show(now)} was asked for; it cannot "
                            "change on resume (the run's optimizer state and evaluation batches depend on it)")


def _show(value: Any) -> str:
    return json.dumps(value)


def _check_tokenizer(run: Path, data_dir: str) -> None:
    """The data directory's tokenizer must be the one the run was trained with (else its ids mean other text)."""
    ours = ckpt.read_tokenizer_json(run)
    theirs = load_meta(data_dir)["tokenizer"]
    if ours == theirs:
        return
    a, b = tokenizer_from_json(ours), tokenizer_from_json(theirs)
    if a.to_json() == b.to_json():  # the same tokenizer, written by another version
        return
    if a.kind != b.kind:
        what = f"the {a.kind} tokenizer, and '{data_dir}' was prepared with the {b.kind} tokenizer"
    elif a.vocab_size != b.vocab_size:
        what = f"a {a.kind} tokenizer of {a.vocab_size:,} tokens, and '{data_dir}' holds one of {b.vocab_size:,}"
    else:
        what = f"a {a.kind} tokenizer of {a.vocab_size:,} tokens, and '{data_dir}' holds one of as many but other tokens"
    raise UserError(f"--resume keeps the run's tokenizer: '{run}' was trained with {what}; point --data.dir at "
                    "data prepared with the run's tokenizer (or start a new run)")


def resumed_config_changed(cfg: Config, run_dir: Path) -> bool:
    """Whether a resume asked for allowed changes that config.json should record (compared as read back, so
    an older file's spelling of the same values is left as it is)."""
    return to_dict(cfg) != to_dict(ckpt.read_config(run_dir))

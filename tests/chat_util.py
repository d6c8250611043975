"""Helpers for the chat tests: a tiny base run, conversations about a few words, and a tiny run fine-tuned on
them (each made once per test session)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from conftest import tiny_config

WORDS = ["line", "quick", "brown", "fox", "lazy", "dog", "over"]
BLOCK = 48  # the base run's context: every conversation here fits it
_MADE: dict[str, Path] = {}


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = WORDS[int(rng.integers(len(WORDS)))]
        msgs = [{"role": "user", "content": f"spell {w}"}, {"role": "assistant", "content": " ".join(w)}]
        if i % 3 == 0:
            msgs = [{"role": "system", "content": "brief"}] + msgs + [
                {"role": "user", "content": "again"}, {"role": "assistant", "content": w}]
        out.append({"messages": msgs})
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make_base_run(small_text_dir: Path, tmp_path_factory) -> Path:
    from scratchgpt.train import train

    if "base" not in _MADE:
        out = tmp_path_factory.mktemp("chat") / "base"
        cfg = tiny_config(small_text_dir, max_iters=6, eval_interval=6)
        train(replace(cfg, model=replace(cfg.model, block_size=BLOCK)), out_dir=out, progress=False)
        _MADE["base"] = out
    return _MADE["base"]


def make_chat_data(base_run: Path, tmp_path_factory) -> Path:
    from scratchgpt import checkpoint as ckpt
    from scratchgpt.chat_data import prepare_chat

    if "data" not in _MADE:
        d = tmp_path_factory.mktemp("chatdata")
        prepare_chat([write_jsonl(d / "conv.jsonl", conversations(40))], d / "data", ckpt.read_tokenizer(base_run),
                     BLOCK)
        _MADE["data"] = d / "data"
    return _MADE["data"]


def sft_config(chat_data: Path, base_run: Path, **train_kw):
    from scratchgpt.config import from_dict

    t = {"max_iters": 8, "batch_size": 4, "eval_interval": 4, "eval_iters": 2, "log_interval": 1, "warmup_iters": 1,
         "device": "cpu", "dtype": "float32", "learning_rate": 3e-3}
    t.update(train_kw)
    return from_dict({"data": {"dir": str(chat_data), "format": "chat"},
                      "model": {"init_from": str(base_run), "dropout": 0.1}, "train": t}, name="sft")


def make_sft_run(chat_data: Path, base_run: Path, tmp_path_factory) -> Path:
    from scratchgpt.train import train

    if "sft" not in _MADE:
        out = tmp_path_factory.mktemp("sft") / "run"
        train(sft_config(chat_data, base_run), out_dir=out, progress=False)
        _MADE["sft"] = out
    return _MADE["sft"]

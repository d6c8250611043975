"""The run directory: weight round trips, corrupt and unsafe files refused, shape checks, atomic writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.errors import CheckpointError
from scratchgpt.fileio import atomic_write_json
from scratchgpt.models import GPT, GPTConfig
from scratchgpt.train import train


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 11}
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def run_dir(small_text_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt_run") / "run"
    train(tiny_config(small_text_dir, max_iters=4, eval_interval=2), out_dir=out, progress=False)
    return out


class MakesMarker:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_weights_round_trip(tmp_path):
    a, b = tiny_gpt(0), tiny_gpt(1)
    assert not same_weights(a, b)
    ckpt.save_weights(tmp_path / "m.safetensors", a, step=7)
    assert ckpt.load_weights(tmp_path / "m.safetensors", b) == 7
    assert same_weights(a, b)
    assert b.lm_head.weight is b.wte.weight  # still one tensor after loading
    assert leftovers(tmp_path) == []


def test_trainer_state_round_trip(tmp_path):
    a = tiny_gpt(0)
    opt = torch.optim.AdamW(a.parameters(), lr=1e-3)
    a(torch.randint(11, (2, 8)), torch.randint(11, (2, 8)))[1].backward()
    opt.step()
    rng = torch.get_rng_state()
    ckpt.save_trainer_state(tmp_path, a, opt, {"rng": rng}, {"step": 3, "best_val": 1.5})
    b = tiny_gpt(1)
    opt_b = torch.optim.AdamW(b.parameters(), lr=5.0)
    extra, info = ckpt.load_trainer_state(tmp_path, b, opt_b)
    assert same_weights(a, b)
    assert info["step"] == 3 and info["best_val"] == 1.5
    assert torch.equal(extra["rng"], rng)
    assert opt_b.param_groups[0]["lr"] == 1e-3
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], opt_b.state[q][key])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "header_only"])
def test_damaged_files_raise_checkpoint_error(tmp_path, damage):
    model = tiny_gpt()
    path = tmp_path / "m.safetensors"
    ckpt.save_weights(path, model, 1)
    good = path.read_bytes()
    bad = {"truncated": good[: len(good) // 2], "random": os.urandom(len(good)), "empty": b"",
           "header_only": good[:8]}[damage]
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        ckpt.load_weights(path, model)
    with pytest.raises(CheckpointError):
        ckpt.load_trainer_state(tmp_path, model, torch.optim.AdamW(model.parameters()))


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_weights(tmp_path / "nope.safetensors", tiny_gpt())


@pytest.mark.parametrize("target", [ckpt.MODEL, ckpt.STATE])
@pytest.mark.parametrize("flavour", ["pickle", "torch.save"])
def test_pickle_payload_is_refused_and_never_run(run_dir, tmp_path, target, flavour):
    # the payload is live: unpickling it really does create a file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(MakesMarker(probe)))
    assert probe.exists()

    run = tmp_path / "run"
    run.mkdir()
    for name in (ckpt.CONFIG, ckpt.TOKENIZER, ckpt.MODEL, ckpt.STATE):
        (run / name).write_bytes((run_dir / name).read_bytes())
    marker = tmp_path / "pwned"
    if flavour == "pickle":
        (run / target).write_bytes(pickle.dumps({"weights": MakesMarker(marker)}))
    else:
        torch.save({"wte.weight": MakesMarker(marker)}, run / target)
    cfg = ckpt.read_config(run)
    with pytest.raises(CheckpointError):
        if target == ckpt.MODEL:
            ckpt.load_model(run, which="last")
        else:
            train(cfg, resume=run, progress=False)
    assert not marker.exists()


def test_shape_mismatch_names_the_tensor(tmp_path):
    ckpt.save_weights(tmp_path / "m.safetensors", tiny_gpt(n_embd=16), 1)
    other = tiny_gpt(n_embd=32)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_weights(tmp_path / "m.safetensors", other)
    msg = str(e.value)
    names = [n for n in other.state_dict() if f"'{n}'" in msg]
    assert names, msg
    assert "does not match" in msg


def test_missing_and_extra_tensors_are_refused(tmp_path):
    ckpt.save_weights(tmp_path / "two.safetensors", tiny_gpt(n_layer=2), 1)
    ckpt.save_weights(tmp_path / "one.safetensors", tiny_gpt(n_layer=1), 1)
    with pytest.raises(CheckpointError, match="'h.1."):
        ckpt.load_weights(tmp_path / "two.safetensors", tiny_gpt(n_layer=1))
    with pytest.raises(CheckpointError, match="lacks 'h.1."):
        ckpt.load_weights(tmp_path / "one.safetensors", tiny_gpt(n_layer=2))


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    for path in (tmp_path / "empty", tmp_path / "afile", tmp_path / "missing"):
        with pytest.raises(CheckpointError, match="not a run directory"):
            ckpt.load_model(path)


def test_damaged_config_json(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in (ckpt.TOKENIZER, ckpt.MODEL):
        (run / name).write_bytes((run_dir / name).read_bytes())
    (run / ckpt.CONFIG).write_text("{ not json")
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_model(run)
    (run / ckpt.CONFIG).write_text('{"format_version": 99, "config": {}}')
    with pytest.raises(CheckpointError, match="format 99"):
        ckpt.load_model(run)


def test_load_model_best_and_last(run_dir):
    best, tok, cfg = ckpt.load_model(run_dir, which="best")
    last, _, _ = ckpt.load_model(run_dir, which="last")
    assert not best.training and cfg.model.vocab_size == tok.vocab_size
    ref = GPT(cfg.model)
    ckpt.load_weights(run_dir / ckpt.MODEL_BEST, ref)
    assert same_weights(best, ref)
    ckpt.load_weights(run_dir / ckpt.MODEL, ref)
    assert same_weights(last, ref)


def test_run_directory_has_no_temp_files(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {ckpt.CONFIG, ckpt.TOKENIZER, ckpt.MODEL, ckpt.MODEL_BEST, ckpt.STATE, ckpt.STATE_JSON} <= names
    assert leftovers(run_dir) == []


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    a, b = tiny_gpt(0), tiny_gpt(1)
    path = tmp_path / "m.safetensors"
    ckpt.save_weights(path, a, 1)
    before = path.read_bytes()

    def crashing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crashing_save_file)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_weights(path, b, 2)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_trainer_state(tmp_path, b, torch.optim.AdamW(b.parameters()), {}, {"step": 2, "best_val": 0.0})
    assert path.read_bytes() == before
    assert not (tmp_path / ckpt.STATE).exists()
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    c = tiny_gpt(2)
    assert ckpt.load_weights(path, c) == 1 and same_weights(a, c)


def test_crash_mid_json_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})

    def crashing_write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(data[:3])
        raise OSError("killed")

    monkeypatch.setattr(Path, "write_bytes", crashing_write_bytes)
    with pytest.raises(OSError, match="killed"):
        atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert leftovers(tmp_path) == []

"""Every number a user can give is range-checked before any work starts: each config key (recipe or
--section.key=value override) and each numeric CLI flag. A bad one is one `error:` line naming the key or
flag and the allowed range, exit status 2, no traceback, and nothing written. Run in-process through
`scratchgpt.cli.main`, in an empty working directory so that any default output would show up."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt import cli
from scratchgpt.config import RANGES, SECTIONS, from_dict
from scratchgpt.errors import ConfigError
from scratchgpt.limits import Range


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def run_refused(argv: list[str], root: Path, capsys) -> str:
    """main(argv) must refuse with exit 2 and exactly one `error:` line, writing nothing under root."""
    before = tree(root)
    assert cli.main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err and out.out == ""
    assert tree(root) == before
    return lines[0]


def bad_values(r: Range) -> list[object]:
    """Values just outside each bound, plus NaN and infinities for floats."""
    out: list[object] = [] if r.integer else [math.nan, math.inf, -math.inf]
    step = 1 if r.integer else 0
    if r.lo is not None:
        out.append(r.lo if r.lo_open else (r.lo - step if r.integer else -1e-9 if r.lo == 0 else r.lo * 0.999))
    if r.hi is not None:
        out.append(r.hi if r.hi_open else (r.hi + step if r.integer else r.hi * 1.001))
    return out


def toml_value(v: object) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


CONFIG_CASES = [(key, v) for key, r in RANGES.items() for v in bad_values(r)]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def recipe(workdir) -> Path:
    path = workdir / "tiny.toml"
    path.write_text('[data]\ndir = "data/nowhere"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n'
                    'vocab_size = 32\n[train]\nmax_iters = 2\nbatch_size = 4\ndevice = "cpu"\n')
    return path


def test_every_number_in_the_config_has_a_range():
    numeric = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if typing.get_type_hints(cls)[f.name] in (int, float)}
    assert numeric == set(RANGES)


@pytest.mark.parametrize("command", ["train", "bench"])
@pytest.mark.parametrize("key, value", CONFIG_CASES, ids=[f"{k}={toml_value(v)}" for k, v in CONFIG_CASES])
def test_config_key_out_of_range_is_one_line(command, key, value, recipe, workdir, capsys):
    line = run_refused([command, str(recipe), f"--{key}={toml_value(value)}"], workdir, capsys)
    assert f"'{key}' must " in line and RANGES[key].describe() in line, line


@pytest.mark.parametrize("key, value", [("train.beta2", "nan"), ("model.dropout", "1.0"), ("train.threads", "-1")])
def test_config_key_out_of_range_in_the_recipe_itself(key, value, workdir, capsys):
    section, name = key.split(".")
    path = workdir / "bad.toml"
    path.write_text(f"[{section}]\n{name} = {value}\n")
    line = run_refused(["train", str(path)], workdir, capsys)
    assert f"'{key}' must " in line


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(RANGES)), st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True)))
def test_from_dict_accepts_exactly_the_range(key, value):
    r = RANGES[key]
    if r.integer and not isinstance(value, int):
        return  # a float for an int key is a type error, tested in test_config
    section, name = key.split(".")
    extra = {"n_embd": 1, "n_head": 1} if key == "model.n_embd" else {"n_head": 1} if key == "model.n_head" else {}
    raw = {section: {name: value}}
    if extra and section == "model":
        raw["model"] = {**extra, name: value}
        if key == "model.n_head":
            raw["model"]["n_embd"] = value if isinstance(value, int) and value > 0 else 1
    if r.contains(value):
        from_dict(raw)
    else:
        with pytest.raises(ConfigError, match=f"'{key}' must"):
            from_dict(raw)


# ---- CLI flags ---------------------------------------------------------------------------------------

def _flag_cases() -> list[tuple[list[str], str, str]]:
    """(argv without the value, the flag, a bad value) for every numeric flag of every subcommand."""
    base = {
        "prepare": ["prepare", "text", "--input", "in.txt", "--out", "data/x"],
        "bench": ["bench", "tiny.toml"],
        "sample": ["sample", "runs/none"],
        "chat": ["chat", "runs/none"],
        "eval": ["eval", "runs/none", "--text", "in.txt"],
        "serve": ["serve", "runs/none"],
        "tokenizer train": ["tokenizer", "train", "--input", "in.txt", "--out", "tok"],
        "tokenizer compare": ["tokenizer", "compare", "--input", "in.txt"],
    }
    bad = {
        ("prepare", "--val-fraction"): ["0", "1", "1.5", "-0.1", "nan", "inf", "abc"],
        ("prepare", "--block-size"): ["0", "-3", "16777217", "2.5"],
        ("prepare", "--vocab-size"): ["0", "-1", str(2**32 + 1)],
        ("prepare", "--workers"): ["0", "-2", "5000"],
        ("prepare", "--shard-tokens"): ["0", "-1", "1e6"],
        ("bench", "--steps"): ["0", "-1"],
        ("bench", "--warmup"): ["-1"],
        ("bench", "--batch-size"): ["0", "-4", str(2**24 + 1)],
        ("bench", "--peak-flops"): ["-1", "nan", "inf"],
        ("sample", "--threads"): ["-1", "5000"],
        ("sample", "--num-samples"): ["0", "-1", "4097"],
        ("sample", "--max-new-tokens"): ["-1", "100001"],
        ("sample", "--top-k"): ["0", "-5"],
        ("sample", "--top-p"): ["0", "1.01", "nan", "-inf"],
        ("sample", "--temperature"): ["nan", "-0.5", "inf"],
        ("sample", "--seed"): [str(2**64), str(-(2**63) - 1), "1.5"],
        ("chat", "--threads"): ["-1", "5000"],
        ("chat", "--max-new-tokens"): ["-1", "100001"],
        ("chat", "--top-k"): ["0"],
        ("chat", "--top-p"): ["0", "nan"],
        ("chat", "--temperature"): ["nan", "-1"],
        ("chat", "--seed"): [str(2**64)],
        ("eval", "--threads"): ["-1", "5000"],
        ("eval", "--stride"): ["0", "-4"],
        ("eval", "--batch-size"): ["0", str(2**24 + 1)],
        ("serve", "--port"): ["0", "-1", "65536", "http"],
        ("serve", "--threads"): ["-1", "100000"],
        ("serve", "--max-batch"): ["0", "5000"],
        ("serve", "--max-tokens-cap"): ["0", "100001"],
        ("serve", "--max-n"): ["0"],
        ("serve", "--max-prompt-tokens"): ["0", "-1"],
        ("serve", "--max-waiting"): ["0"],
        ("serve", "--max-stop"): ["0", "1025"],
        ("serve", "--max-body-bytes"): ["10", "-1"],
        ("tokenizer train", "--vocab-size"): ["0", "-1", str(2**32 + 1)],
        ("tokenizer compare", "--vocab-size"): ["256", "0"],
    }
    return [(base[cmd], flag, v) for (cmd, flag), values in bad.items() for v in values]


FLAG_CASES = _flag_cases()


def _numeric_actions(parser: argparse.ArgumentParser, prefix: str = "") -> set[tuple[str, str]]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _numeric_actions(sub, f"{prefix} {name}".strip())
        elif action.type is not None and action.type.__qualname__.startswith("_number"):
            found.add((prefix, action.option_strings[0]))
        elif action.type in (int, float):
            assert action.option_strings[0] in cli.SAMPLING_FLAGS, f"{prefix} {action.option_strings}: no range"
            found.add((prefix, action.option_strings[0]))
    return found


def test_every_numeric_flag_has_a_range_and_a_case():
    covered = {(" ".join(a for a in argv if not a.startswith("-") and "." not in a and "/" not in a
                         and a not in ("text", "tok", "in.txt")), flag) for argv, flag, _ in FLAG_CASES}
    assert _numeric_actions(cli.build_parser()) == covered


@pytest.mark.parametrize("argv, flag, value", FLAG_CASES, ids=[f"{' '.join(a[:2])} {f}={v}" for a, f, v in FLAG_CASES])
def test_flag_out_of_range_is_one_line_before_any_work(argv, flag, value, recipe, workdir, capsys):
    (workdir / "in.txt").write_text("some text to read " * 50)
    line = run_refused([*argv, f"{flag}={value}"], workdir, capsys)
    if flag in SETTINGS:  # checked by SamplingSettings, before the model loads, or by argparse's int
        assert SETTINGS[flag] in line or f"argument {flag}: invalid int value" in line, line
    else:
        assert f"argument {flag}: must " in line and repr(value) in line, line


SETTINGS = {"--max-new-tokens": "max new tokens must be a whole number from 0 to 100,000", "--top-k": "top-k must be",
            "--top-p": "top-p must be in (0, 1]", "--temperature": "temperature must be a number of at least 0",
            "--seed": "seed must be a whole number from"}


def test_usage_mistakes_are_one_line_too(workdir, capsys):
    assert "unrecognized arguments: --bogus" in run_refused(["sample", "runs/x", "--bogus"], workdir, capsys)
    assert "required" in run_refused(["tokenizer", "train", "--out", "x"], workdir, capsys)
    assert "invalid choice" in run_refused(["prepare", "nonsense"], workdir, capsys)


def test_values_in_range_still_parse():
    args = cli.build_parser().parse_args(["sample", "r", "--temperature", "0", "--top-p", "1", "--seed", str(2**64 - 1),
                                          "--threads", "0", "--num-samples", "4096"])
    assert (args.temperature, args.top_p, args.seed, args.num_samples) == (0.0, 1.0, 2**64 - 1, 4096)
    args = cli.build_parser().parse_args(["serve", "r", "--port", "65535"])
    assert args.port == 65535

"""Every file read is checked before it costs anything (issue 20): a run's config.json against the weights'
safetensors header before any model is built (sample, serve, eval, export, resume, init_from, a Hugging Face
directory), input limits checked as a file is read (choices per question, a line's size), a directory given
for a file said as such. Each refusal is one line, exit 2; nothing is built (a model's constructor raising is
the proof), nothing is held that the limit forbids (the JSON parser's inputs are the proof).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from scratchgpt import schema
from scratchgpt.cli import main as cli_main
from scratchgpt.limits import MAX_CHOICES, MAX_LINE_BYTES
from scratchgpt.models.bigram import BigramLanguageModel
from scratchgpt.models.gpt import GPT
from scratchgpt.train import train
from serve_util import free_port


@pytest.fixture(scope="module")
def run(small_text_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checked") / "run"
    train(tiny_config(small_text_dir, max_iters=2, eval_interval=2), out_dir=out, progress=False)
    return out


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a model with memory fails loudly: a refusal must come before (the shape check may build one on
    the meta device, which allocates nothing, once the layer count agrees with the weights)."""
    for cls in (GPT, BigramLanguageModel):
        def built(self, *args, _init=cls.__init__, **kwargs):
            if torch.get_default_device().type != "meta":
                raise AssertionError("a model was built before the refusal")
            _init(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", built)


def one_error(capsys) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in out.err, out.err
    assert all(not line.startswith("error") for line in lines[:-1]), out.err
    return lines[-1]


def damaged(run: Path, tmp_path: Path, **model) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["config"]["model"].update(model)
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def _init_from_recipe(bad: Path, data: Path, tmp_path: Path) -> list[str]:
    recipe = tmp_path / "ft.toml"
    recipe.write_text(f'[data]\ndir = "{data}"\n[model]\ninit_from = "{bad}"\n'
                      '[train]\nmax_iters = 1\ndevice = "cpu"\n')
    return ["train", str(recipe), "--out", str(tmp_path / "ft"), "--quiet"]


ENTRIES = {  # (bad run, data, tmp) -> argv: every command that builds a model from a run directory
    "sample": lambda bad, data, tmp: ["sample", str(bad), "--prompt", "a", "--max-new-tokens", "2"],
    "eval": lambda bad, data, tmp: ["eval", str(bad), "--text", str(data.parent / "input.txt"), "--quiet"],
    "export": lambda bad, data, tmp: ["export", str(bad), "--out", str(tmp / "hf")],
    "serve": lambda bad, data, tmp: ["serve", str(bad), "--port", str(free_port())],
    "resume": lambda bad, data, tmp: ["train", "--resume", str(bad), "--quiet"],
    "init_from": _init_from_recipe,
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("change, words", [({"n_layer": 100_000}, "n_layer = 100,000 but the weights hold 2 layers"),
                                           ({"n_embd": 32}, "16) in the weights but (")],
                         ids=["n_layer", "n_embd"])
def test_a_damaged_config_is_refused_before_any_model_is_built(entry, change, words, run, small_text_dir, tmp_path,
                                                               capsys, nothing_built):
    """The issue's case: config.json with n_layer = 100000 built the model first (sample: no answer in 60 s,
    2.6 GB). Now its header says 2 layers and the command stops there, naming both files."""
    bad = damaged(run, tmp_path, **change)
    assert cli_main(ENTRIES[entry](bad, small_text_dir, tmp_path)) == 2
    line = one_error(capsys)
    assert words in line and f"'{bad / 'config.json'}'" in line, line
    assert not (tmp_path / "hf").exists() and not (tmp_path / "ft").exists()


def test_a_damaged_hf_config_is_refused_before_tensors_are_read(run, tmp_path, capsys, monkeypatch):
    assert cli_main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_layer"] = 100_000
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    from scratchgpt.interop import hf

    def read(*args):
        raise AssertionError("tensors were read before the refusal")
    monkeypatch.setattr(hf, "read_hf_tensors", read)
    monkeypatch.setattr(GPT, "__init__", read)
    capsys.readouterr()
    assert cli_main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    line = one_error(capsys)
    assert "lacks layer 2" in line and "n_layer = 100,000" in line and not (tmp_path / "run").exists()


def test_a_weights_file_of_integers_is_refused(run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    for name in ("model.safetensors", "model-best.safetensors"):
        tensors = load_file(bad / name)
        tensors["wte.weight"] = tensors["wte.weight"].to(dtype=torch.int32)
        save_file(tensors, bad / name)
    assert cli_main(["sample", str(bad), "--prompt", "a", "--max-new-tokens", "2"]) == 2
    assert "'wte.weight' as I32, not as floating-point weights" in one_error(capsys)


# ---- input limits: checked as the file is read -------------------------------------------------------------

def test_eval_refuses_a_question_with_too_many_choices_before_the_model_loads(run, tmp_path, capsys, nothing_built):
    path = tmp_path / "choices.jsonl"
    path.write_text(json.dumps({"context": "a", "choices": ["b"] * (MAX_CHOICES + 1), "label": 0}) + "\n")
    assert cli_main(["eval", str(run), "--choices", str(path), "--quiet"]) == 2
    line = one_error(capsys)
    assert f"'{path}' line 1: 'choices' has {MAX_CHOICES + 1:,} entries, more than the {MAX_CHOICES:,} allowed" in line


@pytest.mark.parametrize("command", ["eval", "prepare chat"])
def test_a_line_too_long_is_refused_before_it_is_held(command, run, tmp_path, capsys, monkeypatch):
    """`prepare chat` held 1.8 GB for a 50 MB message before refusing it: a line past MAX_LINE_BYTES is now
    refused having read no more of it than that (the JSON parser never sees it)."""
    path = tmp_path / "in.jsonl"
    good = {"context": "a", "choices": ["b"], "label": 0} if command == "eval" else {
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    huge = json.dumps({**good, "pad": "x" * MAX_LINE_BYTES})
    path.write_text(json.dumps(good) + "\n" + huge + "\n" + json.dumps(good) + "\n")
    parsed: list[int] = []
    loads = schema._loads
    monkeypatch.setattr(schema, "_loads", lambda raw, *a: (parsed.append(len(raw)), loads(raw, *a))[1])
    argv = (["eval", str(run), "--choices", str(path), "--quiet"] if command == "eval" else
            ["prepare", "chat", "--input", str(path), "--run", str(run), "--out", str(tmp_path / "chat")])
    assert cli_main(argv) == 2
    line = one_error(capsys)
    assert f"'{path}' line 2 is longer than {MAX_LINE_BYTES:,} bytes" in line, line
    assert max(parsed) < MAX_LINE_BYTES // 4 and not (tmp_path / "chat").exists()  # the long line never parsed


def test_a_line_of_exactly_the_limit_is_read(tmp_path):
    path = tmp_path / "in.jsonl"
    body = json.dumps({"pad": ""})
    line = body[:-2] + "x" * (MAX_LINE_BYTES - len(body)) + '"}'
    path.write_bytes(line.encode() + b"\n")
    assert [n for n, _ in schema.read_jsonl(path, {"pad": str}, "file")] == [1]
    path.write_bytes(line.encode() + b"x\n")
    with pytest.raises(schema.DataError, match="line 1 is longer than"):
        list(schema.read_jsonl(path, {"pad": str}, "file"))


def test_eval_text_that_is_a_directory_says_so(run, tmp_path, capsys):
    assert cli_main(["eval", str(run), "--text", str(tmp_path), "--quiet"]) == 2
    assert f"input file '{tmp_path}' is a directory" in one_error(capsys)
    assert cli_main(["eval", str(run), "--choices", str(tmp_path), "--quiet"]) == 2
    assert f"choices file '{tmp_path}' is a directory" in one_error(capsys)


# ---- the schema check itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, spec, words", [
    ({"a": 1}, {"b": int}, "'b' is missing"),
    ({"a": "1"}, {"a": int}, "'a' must be a whole number, got \"1\""),
    ({"a": True}, {"a": int}, "'a' must be a whole number, got true"),
    ({"a": float("nan")}, {"a": float}, "'a' must be a number"),
    ({"a": [1, "x"]}, {"a": schema.ListOf(int)}, "'a[1]' must be a whole number"),
    ({"a": {"b": [{"c": -1}]}}, {"a": {"b": schema.ListOf({"c": schema.Int(0)})}}, "'a.b[0].c' must be a whole number of at least 0"),
    ({"a": "z"}, {"a": schema.OneOf("x", "y")}, "'a' must be one of \"x\", \"y\""),
    ({"a": {"k": 1}}, {"a": schema.MapOf(schema.Str())}, "'a.k' must be a non-empty string"),
    ([], {"a": int}, "expected an object, got a list of 0"),
])
def test_schema_problems_name_the_place(value, spec, words):
    with pytest.raises(schema.DataError) as e:
        schema.check(value, spec, "'f.json' is damaged", hint="; fix it")
    assert str(e.value) == f"'f.json' is damaged: {words}{str(e.value).split(words, 1)[1]}" and str(e.value).endswith("; fix it")
    assert schema.problem({"b": 1, "x": "anything"}, {"b": int, "c": schema.Opt(str)}) is None

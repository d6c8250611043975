"""The notebook API (`scratchgpt.load(run).generate / .stream`), `scratchgpt sample` on the engine, and the
`--interactive` REPL: same text as the engine, settings changed in place, bad input as one error line."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

import scratchgpt
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.config import from_dict
from scratchgpt.errors import UserError
from scratchgpt.generate import Engine
from scratchgpt.models import build_model
from scratchgpt.repl import apply_command, run_repl
from scratchgpt.sampling import SamplingSettings
from scratchgpt.tokenizers import CharTokenizer

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training writes it, with random weights (generation does not care)."""
    run = tmp_path_factory.mktemp("api_run")
    cfg = from_dict({"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 65,
                               "init_std": 0.1}}, name="api")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ckpt.write_run_header(run, cfg, CharTokenizer(list(CHARS)), model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=1)
    return run


def test_import_is_cheap_and_has_no_side_effects():
    code = "import sys, scratchgpt; print(callable(scratchgpt.load), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["True", "False"] and out.stderr == ""


def test_load_generate_and_stream_match_the_engine(run_dir):
    lm = scratchgpt.load(run_dir)
    model, tok, _ = ckpt.load_model(run_dir)
    expected = Engine(model, tok).generate("ROMEO:", max_new_tokens=40, temperature=0)
    assert lm.generate("ROMEO:", max_new_tokens=40, temperature=0) == expected
    assert "".join(lm.stream("ROMEO:", max_new_tokens=40, temperature=0)) == expected
    a = lm.generate("KING:", max_new_tokens=30, seed=3, top_p=0.9)
    assert a == lm.generate("KING:", max_new_tokens=30, seed=3, top_p=0.9) and len(a) == 30
    many = lm.generate(["A", "BC"], num_samples=2, max_new_tokens=5, seed=1)
    assert len(many) == 4 and all(len(t) == 5 for t in many)
    greedy = scratchgpt.load(run_dir, temperature=0, max_new_tokens=40)  # defaults for every call
    assert greedy.generate("ROMEO:") == expected
    assert "api" in repr(greedy)


def test_api_bad_input_is_a_user_error(run_dir):
    lm = scratchgpt.load(run_dir)
    with pytest.raises(UserError, match=r"top-p must be in \(0, 1\]"):
        lm.generate("A", top_p=2)
    with pytest.raises(UserError, match="not in the tokenizer's vocabulary"):
        lm.stream("\u00e9t\u00e9")
    with pytest.raises(UserError, match="which must be"):
        scratchgpt.load(run_dir, which="newest")


def test_cli_sample_streams_through_the_engine(run_dir, capsys):
    args = ["sample", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    model, tok, _ = ckpt.load_model(run_dir)
    text = Engine(model, tok).generate("ROMEO:", max_new_tokens=40, temperature=0)
    assert out == "ROMEO:" + text + "\n"
    stop = text[10:12]
    assert main([*args, "--stop", stop]) == 0
    assert capsys.readouterr().out == "ROMEO:" + text[: text.index(stop)] + "\n"
    assert main(["sample", str(run_dir), "--num-samples", "3", "--max-new-tokens", "8", "--seed", "2",
                 "--top-k", "5", "--top-p", "0.8"]) == 0
    assert capsys.readouterr().out.count("\n---------------\n") == 2


@pytest.mark.parametrize("extra, fragment", [
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--temperature", "-1"], "temperature must be a number of at least 0"),
    (["--max-new-tokens", "1000000"], "max new tokens must be a whole number from 0 to 100,000"),
    (["--prompt", "caf\u00e9"], "not in the tokenizer's vocabulary"),
    (["--interactive", "--prompt", "A"], "--interactive takes its text from what you type"),
])
def test_cli_sample_bad_input_is_one_error_line(run_dir, capsys, extra, fragment):
    assert main(["sample", str(run_dir), *extra]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_repl_continues_the_text_and_changes_settings_in_place(run_dir):
    model, tok, _ = ckpt.load_model(run_dir)
    engine = Engine(model, tok)
    lines = iter(["/temperature 0", "/max_new_tokens 12", "ROMEO:", "", "/top_p 2", "/tempreture 1",
                  "caf\u00e9", "/settings", "/quit", "never read"])

    def read() -> str:
        return next(lines)

    out, err = io.StringIO(), io.StringIO()
    run_repl(engine, SamplingSettings(), read=read, out=out, err=err)
    first = engine.generate("ROMEO:\n", max_new_tokens=12, temperature=0)
    second = engine.generate("ROMEO:\n" + first, max_new_tokens=12, temperature=0)  # an empty line: more
    assert out.getvalue() == first + ("" if first.endswith("\n") else "\n") + second + ("" if second.endswith("\n") else "\n")
    e = err.getvalue()
    assert "error: top-p must be in (0, 1]" in e and "did you mean 'temperature'" in e
    assert "error: character '\u00e9'" in e and "temperature 0, top_k none, top_p 1, max_new_tokens 12" in e
    assert "Traceback" not in e


def test_repl_commands():
    s = SamplingSettings()
    s, _ = apply_command("/top-k 40", s)
    s, _ = apply_command("/seed 3", s)
    s, _ = apply_command("/stop \\n\\n", s)
    s, _ = apply_command("/stop END", s)
    assert (s.top_k, s.seed, s.stop) == (40, 3, ("\n\n", "END"))
    s, action = apply_command("/stop", s)
    assert s.stop == () and action is None
    assert apply_command("/top_k none", s)[0].top_k is None
    assert apply_command("/reset", s)[1] == "reset" and apply_command("/exit", s)[1] == "quit"
    with pytest.raises(UserError, match="needs a number"):
        apply_command("/temperature warm", s)
    with pytest.raises(UserError, match="needs a value"):
        apply_command("/top_p", s)


def test_cli_interactive_reads_stdin(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/temperature 0\n/max_new_tokens 5\nKING:\n/top_p 0\n"))
    assert main(["sample", str(run_dir), "--interactive"]) == 0  # ends at end of input
    captured = capsys.readouterr()
    assert len(captured.out.rstrip("\n")) >= 1 and "error: top-p must be in (0, 1]" in captured.err

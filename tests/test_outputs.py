"""One rule for every directory a command writes (src/scratchgpt/outputs.py): a new or empty directory, or one of
the command's own kind (replaced whole, the user's other files kept); anything else refused in one sentence
with nothing touched; a kill mid-write leaves the old contents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_util import conversations, make_base_run, write_jsonl
from kill_util import snapshot
from scratchgpt.cli import main as cli_main
from scratchgpt.data import load_meta


def listing(d: Path) -> dict[str, bytes | None]:
    """Every entry under d (directories too, hidden ones too) with a file's bytes: what "untouched" compares."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def one_error(capsys) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.err, out.err
    return lines[0]


@pytest.fixture(scope="module")
def base_run(small_text_dir, tmp_path_factory):
    return make_base_run(small_text_dir, tmp_path_factory)


def test_prepare_chat_never_deletes_what_is_in_its_output(base_run, small_text_dir, tmp_path, capsys):
    """The issue's worst case: `prepare chat --out DIR` over a trained run, the input JSONL and notes deleted
    them all and exited 0. Now: refused, nothing touched; beside its input alone it writes and keeps the input;
    over text data it refuses without --force, and with it keeps the user's files."""
    d = tmp_path / "d"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (d / name).write_bytes((base_run / name).read_bytes())
    conv = write_jsonl(d / "conv.jsonl", conversations(12))
    (d / "notes.txt").write_text("mine\n")
    before = listing(d)
    argv = ["prepare", "chat", "--input", str(conv), "--run", str(base_run)]
    assert cli_main([*argv, "--out", str(d)]) == 2
    line = one_error(capsys)
    assert f"'{d}' holds a run" in line and "prepare chat" in line
    assert listing(d) == before and sorted(p.name for p in tmp_path.iterdir()) == ["d"]

    beside = tmp_path / "beside"
    beside.mkdir()
    conv2 = write_jsonl(beside / "conv.jsonl", conversations(12))
    assert cli_main([*argv[:3], str(conv2), *argv[4:], "--out", str(beside)]) == 0
    assert load_meta(beside)["data_format"] == "chat" and conv2.read_bytes() == conv.read_bytes()

    text = tmp_path / "text"
    assert cli_main(["prepare", "text", "--input", str(small_text_dir.parent / "input.txt"), "--out", str(text)]) == 0
    (text / "notes.txt").write_text("mine\n")
    before = listing(text)
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(text)]) == 2
    line = one_error(capsys)
    assert "holds prepared text data" in line and "--force" in line and listing(text) == before
    assert cli_main([*argv, "--out", str(text), "--force"]) == 0
    assert load_meta(text)["data_format"] == "chat" and (text / "notes.txt").read_text() == "mine\n"
    capsys.readouterr()
    assert cli_main(["prepare", "text", "--input", str(small_text_dir.parent / "input.txt"), "--out", str(text)]) == 2
    assert "holds prepared chat data" in one_error(capsys)
    assert snapshot(text)["notes.txt"] == b"mine\n"

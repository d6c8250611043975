"""`scratchgpt demo chat` (src/scratchgpt/chat_demo.py) at its tiny budget: every step runs from an empty
directory and the last line is the accuracy line; a second run reuses the base and replaces only its own
fine-tuned run; a run it did not write is refused, untouched. The measured full demo: docs/benchmarks.md."""

from __future__ import annotations

import json
import re

from scratchgpt.chat_demo import make_data, questions
from scratchgpt.cli import main
from scratchgpt.fileio import sha256_file

LAST_LINE = re.compile(r"^held-out accuracy: base (\d+)%, chat (\d+)%$")


def demo(shakespeare_path, tmp_path) -> list[str]:
    return ["demo", "chat", "--budget", "tiny", "--corpus", str(shakespeare_path), "--data", str(tmp_path / "data"),
            "--runs", str(tmp_path / "runs"), "--quiet"]


def test_held_out_questions_are_about_words_training_never_saw(shakespeare_path, tmp_path):
    make_data(shakespeare_path, tmp_path, train_size=300, heldout_words=20)
    asked = [json.loads(ln)["messages"] for ln in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    held = [json.loads(ln)["messages"] for ln in (tmp_path / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(asked) == 300 and len(held) == 60
    held_words = {m[0]["content"].split()[-1].rstrip("?") for m in held}
    assert len(held_words) == 20
    assert not held_words & {m[0]["content"].split()[-1].rstrip("?") for m in asked}
    assert questions("crown") == [("spell crown", "c-r-o-w-n"), ("reverse crown", "nworc"),
                                  ("how many letters in crown?", "five")]


def test_the_demo_runs_end_to_end_and_again(shakespeare_path, tmp_path, capsys):
    assert main(demo(shakespeare_path, tmp_path)) == 0
    out = capsys.readouterr()
    assert LAST_LINE.match(out.out.splitlines()[-1]), out.out
    for run in ("chat_demo_base", "chat_demo"):
        assert (tmp_path / "runs" / run / "config.json").is_file()
    base = sha256_file(tmp_path / "runs/chat_demo_base/model.safetensors")

    assert main(demo(shakespeare_path, tmp_path)) == 0  # the base is reused, the demo's own fine-tuning replaced
    out = capsys.readouterr()
    assert "reusing the base run" in out.err and LAST_LINE.match(out.out.splitlines()[-1])
    assert sha256_file(tmp_path / "runs/chat_demo_base/model.safetensors") == base


def test_a_run_the_demo_did_not_write_is_refused_untouched(shakespeare_path, tmp_path, capsys):
    assert main(demo(shakespeare_path, tmp_path)) == 0
    cfg = tmp_path / "runs/chat_demo/config.json"
    header = json.loads(cfg.read_text(encoding="utf-8"))
    header["config"]["name"] = "someone_elses"
    cfg.write_text(json.dumps(header), encoding="utf-8")
    before = sha256_file(tmp_path / "runs/chat_demo/model.safetensors")
    capsys.readouterr()
    assert main(demo(shakespeare_path, tmp_path)) == 2
    assert "--force" in capsys.readouterr().err
    assert sha256_file(tmp_path / "runs/chat_demo/model.safetensors") == before


def test_a_corpus_the_demo_cannot_use_is_one_sentence(tmp_path, capsys):
    """A missing path, a file that is not UTF-8, and a text with too few words: each one `error:` line, exit 2,
    nothing written."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ol\xe9 ".encode("latin-1") * 50)
    (tmp_path / "tiny.txt").write_text("hello world", encoding="utf-8")
    for corpus, says in ((tmp_path / "missing.txt", "not found"), (tmp_path / "latin1.txt", "UTF-8"),
                         (tmp_path / "tiny.txt", "distinct lower-case words")):
        argv = ["demo", "chat", "--budget", "tiny", "--corpus", str(corpus), "--data", str(tmp_path / "data"),
                "--runs", str(tmp_path / "runs"), "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data" / "chat_demo").exists()

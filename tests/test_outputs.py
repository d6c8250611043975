"""One rule for every directory a command writes (src/scratchgpt/outputs.py): a new or empty directory, or one of
the command's own kind (replaced whole, the user's other files kept); anything else refused in one sentence
with nothing touched; a kill mid-write leaves the old contents.

`test_every_writer` walks every command that writes a directory (WRITERS) through four cases: a foreign
non-empty target, another kind's directory (both refused, `--force` or not, the target's full listing and
bytes unchanged and nothing left beside it), its own kind (replaced whole: what a fresh run writes, plus the
user's file) and, marked slow, a SIGKILL mid-write and just before the swap (the old contents intact).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from chat_util import conversations, make_base_run, write_jsonl
from conftest import REPO
from kill_util import FS_GATES, Zygote, snapshot
from scratchgpt import outputs
from scratchgpt.cli import main as cli_main
from scratchgpt.data import load_meta
from scratchgpt.errors import UserError
from scratchgpt.lecture import BUDGETS, recipes_dir


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


# ---- every writer, one parametrized test ------------------------------------------------------------------

CHAT_DEMO = f"{REPO / 'tests' / 'demo_data_entry.py'}:main"  # `scratchgpt demo chat`'s data step
GPU_ACCEPTANCE = f"{REPO / 'benchmarks' / 'gpu_acceptance.py'}:main"
CORPUS = ["--workers", "1", "--txt-docs", "line"]
LEFTOVER = re.compile(r"\..+\.\d+\.[^.]+(\.[^.]+)?\.(tmp|old)")  # a killed writer's staging or temp file
_SCRIPTS: dict[str, Callable[[list[str]], int]] = {}


def run(argv: list[str], entry: str = "") -> int:
    """A command in this process: `scratchgpt` itself, or a script's main (entry "path:function")."""
    if not entry:
        return cli_main(argv)
    if entry not in _SCRIPTS:
        path, name = entry.rsplit(":", 1)
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[Path(path).stem] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        _SCRIPTS[entry] = getattr(module, name)
    return _SCRIPTS[entry](argv)


def kept(d: Path) -> dict[str, bytes | None]:
    """listing() without what a killed writer leaves (the next run of the command removes it)."""
    return {k: v for k, v in listing(d).items() if not any(LEFTOVER.fullmatch(part) for part in Path(k).parts)}


def stale_lecture_step(res: dict[str, Path], target: Path) -> None:
    """A lecture directory whose first step was trained with other settings: the lecture must redo it."""
    assert cli_main(["train", str(recipes_dir() / "1_bigram.toml"), "--out", str(target / "tiny" / "1_bigram"),
                     "--quiet", f"--data.dir={res['data']}", "--train.device=cpu", *BUDGETS["tiny"]["1_bigram"],
                     "--train.seed=5"]) == 0


def old_workdir(res: dict[str, Path], target: Path) -> None:
    """What an earlier acceptance run left: its logs, its table, a run."""
    (target / "logs").mkdir(parents=True)
    (target / "logs" / "bench.log").write_text("an earlier run's log\n")
    (target / "gpu_acceptance.md").write_text("an earlier table\n")
    shutil.copytree(res["run"], target / "speedrun")


@dataclass(frozen=True)
class Writer:
    argv: Callable[[dict[str, Path], Path, bool], list[str]]  # (resources, target, the new output?) -> argv
    other: str  # the resource that is another kind's directory
    force: bool = False  # replacing its own kind takes --force
    exact: bool = True  # replaced by exactly what a fresh run writes (else: the same names)
    user: str = "notes.txt"  # where a user's file goes in a directory of its kind ("": nowhere)
    entry: str = ""  # a script's main instead of `scratchgpt`
    old: Callable[[dict[str, Path], Path], None] | None = None  # makes its own kind (default: its old output)
    kill: bool = True  # has a SIGKILL case (False: it writes only through other commands, whose cases cover it)


WRITERS: dict[str, Writer] = {
    "prepare-text": Writer(lambda r, t, new: ["prepare", "text", "--input", str(r["new.txt" if new else "old.txt"]),
                                              "--out", str(t)], other="run"),
    "prepare-corpus": Writer(lambda r, t, new: ["prepare", "text", "--input", str(r["new.txt" if new else "old.txt"]),
                                                "--out", str(t), *CORPUS], other="run"),
    "prepare-shakespeare_char": Writer(lambda r, t, new: ["prepare", "shakespeare_char", "--input",
                                                          str(r["new.txt" if new else "old.txt"]), "--out", str(t)],
                                       other="hf"),
    "prepare-chat": Writer(lambda r, t, new: ["prepare", "chat", "--input", str(r["new.jsonl" if new else "old.jsonl"]),
                                              "--run", str(r["base"]), "--out", str(t)], other="run"),
    "tokenizer-train": Writer(lambda r, t, new: ["tokenizer", "train", "--input", str(r["new.txt" if new else "old.txt"]),
                                                 "--vocab-size", "280" if new else "270", "--out", str(t)], other="run"),
    "train": Writer(lambda r, t, new: ["train", str(r["recipe"]), "--out", str(t), "--quiet",
                                       *([] if new else ["--train.seed=7"])], other="data", force=True, exact=False),
    "export": Writer(lambda r, t, new: ["export", str(r["run" if new else "run7"]), "--out", str(t)], other="run",
                     force=True),
    "import-hf": Writer(lambda r, t, new: ["import-hf", str(r["hf" if new else "hf7"]), "--out", str(t)], other="hf",
                        force=True),
    "lecture": Writer(lambda r, t, new: ["lecture", "--budget", "tiny", "--device", "cpu", "--data", str(r["data"]),
                                         "--runs", str(t), "--docs", str(t.parent / "docs"), "--quiet"],
                      other="run", exact=False, user="tiny/1_bigram/notes.txt", old=stale_lecture_step),
    "chat-demo": Writer(lambda r, t, new: ["--corpus", str(r["words.txt"]), "--out", str(t), "--train-size",
                                           "20", "--heldout-words", "3", "--seed", "1" if new else "2"],
                        other="data", entry=CHAT_DEMO),
    "gpu-acceptance": Writer(lambda r, t, new: ["--cpu-smoke", "--workdir", str(t), "--table-file",
                                                str(t.parent / "table.md"), "--only", "decode"],
                             other="run", exact=False, user="", entry=GPU_ACCEPTANCE, old=old_workdir, kill=False),
}


@pytest.fixture(scope="module")
def res(small_text_dir, base_run, tmp_path_factory) -> dict[str, Path]:
    """Inputs of every writer, and a directory of each kind to be refused: data, two runs, two exports."""
    r = tmp_path_factory.mktemp("writers")
    (r / "old.txt").write_text("".join(f"old line {i}: to be or not to be\n" for i in range(60)))
    (r / "new.txt").write_text("".join(f"NEW line {i}, other words; other characters!\n" for i in range(80)))
    write_jsonl(r / "old.jsonl", conversations(12, seed=0))
    write_jsonl(r / "new.jsonl", conversations(14, seed=1))
    out = {p.name: p for p in r.iterdir()}
    out["words.txt"] = small_text_dir.parent / "input.txt"
    out["base"] = base_run
    assert cli_main(["prepare", "text", "--input", str(r / "old.txt"), "--out", str(r / "data")]) == 0
    out["data"] = r / "data"
    model = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
    train = {"max_iters": 2, "batch_size": 2, "eval_interval": 2, "eval_iters": 1, "log_interval": 1,
             "warmup_iters": 1, "device": "cpu", "dtype": "float32"}
    out["recipe"] = r / "tiny.toml"
    out["recipe"].write_text("\n".join([f'[data]\ndir = "{r / "data"}"', "[model]",
                                       *(f"{k} = {json.dumps(v)}" for k, v in model.items()), "[train]",
                                       *(f"{k} = {json.dumps(v)}" for k, v in train.items())]) + "\n")
    for name, seed in (("run", 1337), ("run7", 7)):
        assert cli_main(["train", str(out["recipe"]), "--out", str(r / name), "--quiet", f"--train.seed={seed}"]) == 0
        assert cli_main(["export", str(r / name), "--out", str(r / name.replace("run", "hf"))]) == 0
        out[name], out[name.replace("run", "hf")] = r / name, r / name.replace("run", "hf")
    return out


def _refused(capsys, target: Path, what: str) -> None:
    line = one_error(capsys)
    assert f"'{target}' holds {what}" in line and "choose another" in line, line


CASES = [pytest.param(name, case, id=f"{name}-{case}", marks=[pytest.mark.slow] if case == "sigkill" else [])
         for name, w in WRITERS.items() for case in ("foreign", "other-kind", "own-kind", "sigkill")
         if case != "sigkill" or w.kill]


def _canonical(name: str, data: bytes) -> bytes:
    """A file's bytes, with a safetensors header's keys sorted: safetensors writes its metadata map in a
    random order, so two writes of the same tensors and metadata may differ in those bytes alone."""
    if not name.endswith(".safetensors"):
        return data
    n = int.from_bytes(data[:8], "little")
    return json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode() + data[8 + n:]


@pytest.mark.parametrize("name, case", CASES)
def test_every_writer(name, case, res, tmp_path, capsys, zygote):
    w = WRITERS[name]
    work = tmp_path / "work"
    work.mkdir()
    target = work / "out"
    force = ["--force"] if w.force else []
    if case in ("foreign", "other-kind"):
        if case == "foreign":
            (target / "sub").mkdir(parents=True)
            (target / "notes.txt").write_text("the user's own notes\n")
            (target / "sub" / "deep.txt").write_text("more of them\n")
        else:
            shutil.copytree(res[w.other], target)
        before, beside = listing(target), sorted(p.name for p in work.iterdir())
        for extra in ([[]] + [force] if force else [[]]):  # --force never makes another kind's directory ours
            capsys.readouterr()
            assert run(w.argv(res, target, True) + extra, w.entry) == 2
            _refused(capsys, target, "files it did not write ('notes.txt', 'sub')" if case == "foreign"
                     else outputs.describe(res[w.other]))
            assert listing(target) == before and sorted(p.name for p in work.iterdir()) == beside
        return

    if w.old is not None:
        w.old(res, target)
    else:
        assert run(w.argv(res, target, False), w.entry) == 0
    if w.user:
        (target / w.user).write_text("the user's own notes\n")
    before = kept(target)
    new = w.argv(res, target, True) + force
    if case == "sigkill":
        for kill_at in (1, "exchange"):  # early in the write, and the last moment before the swap
            assert zygote.trial(kill_at, new, w.entry) is not None, "the command was never killed"
            assert kept(target) == before, f"killed before step {kill_at}: the old contents changed"
        return

    if force:
        capsys.readouterr()
        assert run(new[:-1], w.entry) == 2
        assert "--force" in one_error(capsys) and kept(target) == before
    assert run(new, w.entry) == 0
    now = snapshot(target)
    if w.user:
        assert now.pop(w.user) == b"the user's own notes\n"
    if name == "lecture":  # the stale step redone, every other step trained
        assert json.loads(now["tiny/1_bigram/config.json"])["config"]["train"]["seed"] != 5
        assert {Path(k).parts[1] for k in now if k.endswith("lecture.json")} == {
            s for s in BUDGETS["tiny"] if s[0].isdigit()}
        return
    if name == "gpu-acceptance":  # an earlier run's files kept, this run's logs added
        assert now["logs/bench.log"] == b"an earlier run's log\n" and "logs/decode_graphs.log" in now
        assert all(now[k] == before[k] for k in before if k.startswith("speedrun/") and before[k] is not None)
        return
    ref = tmp_path / "ref" / target.name
    assert run(w.argv(res, ref, True), w.entry) == 0
    fresh = snapshot(ref)
    assert now.keys() == fresh.keys()  # the old output replaced whole: none of its files left over
    if w.exact:
        assert {k: _canonical(k, v) for k, v in now.items()} == {k: _canonical(k, v) for k, v in fresh.items()}
    else:
        assert now["model.safetensors"] != before["model.safetensors"]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """One warm process for every writer's SIGKILL trials (started on first use)."""
    made: list[Zygote] = []

    class Lazy:
        def trial(self, *args, **kwargs):
            if not made:
                made.append(Zygote(["--help"], tmp_path_factory.mktemp("zygote"), FS_GATES,
                                   preload=("torch", "scratchgpt.train", "scratchgpt.lecture", "scratchgpt.interop.hf",
                                            "scratchgpt.corpus", "scratchgpt.chat_data", "matplotlib.pyplot")))
            return made[0].trial(*args, **kwargs)

    yield Lazy()
    for z in made:
        z.close()


def test_every_file_a_writer_writes_is_its_kinds_output(res, base_run, tmp_path):
    """What a replacement drops is exactly the kind's outputs: every file each writer writes must be one (else an
    old one would be carried into the new directory as if it were the user's)."""
    from scratchgpt import checkpoint as ckpt
    from scratchgpt.interop.hf_tokenizer import hf_tokenizer_files
    from scratchgpt.tokenizers import CharTokenizer
    from scratchgpt.tokenizers.bpe_train import train_bpe

    assert {ckpt.CONFIG, ckpt.TOKENIZER, ckpt.MODEL, ckpt.MODEL_BEST, ckpt.STATE, ckpt.STATE_JSON} <= set(outputs.RUN_FILES)
    assert all(outputs.RUN.is_output(p.name) for p in res["run"].iterdir())
    assert all(outputs.EXPORT.is_output(p.name) for p in res["hf"].iterdir())
    bpe = train_bpe(["to be or not to be, that is the question"], 270)
    for tok in (CharTokenizer("abc"), bpe, bpe.with_special_tokens(["<|endoftext|>"])):
        files, _ = hf_tokenizer_files(tok, 16)
        assert all(outputs.EXPORT.is_output(name) for name in files or {}), sorted(files or {})
    assert cli_main(["prepare", "text", "--input", str(res["new.txt"]), "--out", str(tmp_path / "c"), *CORPUS,
                     "--shard-tokens", "500"]) == 0
    assert cli_main(["prepare", "chat", "--input", str(res["new.jsonl"]), "--run", str(base_run), "--out",
                     str(tmp_path / "chat")]) == 0
    assert cli_main(["tokenizer", "train", "--input", str(res["new.txt"]), "--vocab-size", "270", "--out",
                     str(tmp_path / "tok")]) == 0
    for d, kind in ((res["data"], outputs.DATA), (tmp_path / "c", outputs.DATA), (tmp_path / "chat", outputs.DATA),
                    (tmp_path / "tok", outputs.TOKENIZER)):
        names = [p.name for p in d.iterdir()]
        assert kind.marker(d) and all(kind.is_output(n) for n in names), names
    assert not outputs.DATA.is_output("input.txt") and not outputs.RUN.is_output("notes.txt")


@pytest.mark.parametrize("files", [("tokenizer.json",), ("loss.png",), ("tokenizer.json", "loss.png")])
def test_train_never_takes_a_directory_of_run_file_names_that_no_killed_run_left(files, res, tmp_path, capsys):
    """A killed run leaves logged metrics or weights before anything else; a directory holding only, say, a
    tokenizer.json (a `tokenizer train` output) or a plot is somebody's, so train refuses it and touches nothing."""
    target = tmp_path / "out"
    target.mkdir()
    for name in files:
        (target / name).write_text("{}" if name.endswith(".json") else "not a plot")
    before = listing(target)
    assert cli_main(["train", str(res["recipe"]), "--out", str(target), "--quiet"]) == 2
    assert f"'{target}' holds" in one_error(capsys)
    assert listing(target) == before
    (target / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 4.0}\n')  # now a killed run's
    assert cli_main(["train", str(res["recipe"]), "--out", str(target), "--quiet"]) == 0


@pytest.mark.parametrize("body", ["{not json", "[" * 200_000 + "]" * 200_000], ids=["not-json", "nested-deeply"])
def test_a_damaged_config_json_counts_as_a_run(body, tmp_path, capsys):
    """A config.json that cannot be read (not JSON, or JSON nested too deeply for the parser: 400 KB of `[[[...]]]`)
    marks a run, the cautious reading: described as one, refused without --force in one sentence, replaced with
    it; never a traceback."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "config.json").write_text(body)
    before = listing(d)
    assert outputs.describe(d) == "a run (config.json)"
    assert outputs.RUN.marker(d) and not outputs.EXPORT.marker(d)
    with pytest.raises(UserError, match="already holds a run; pass --force"):
        outputs.claim(d, outputs.RUN, "train")
    assert outputs.claim(d, outputs.RUN, "train", force=True).replaces
    with pytest.raises(UserError, match=re.escape(f"'{d}' holds a run (config.json)")):
        outputs.claim(d, outputs.DATA, "prepare text")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\n'
                      'block_size = 16\n[train]\nmax_iters = 2\ndevice = "cpu"\n')
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--out", str(d), "--quiet"]) == 2
    assert f"'{d}' already holds a run" in one_error(capsys)
    assert listing(d) == before

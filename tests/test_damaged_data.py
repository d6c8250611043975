"""Loading a prepared directory checks its files against meta.json (sizes against token counts and dtype,
dtype against vocabulary, vocabulary against the tokenizer JSON) and a damaged one is one sentence saying to
prepare it again: through `BatchLoader` and through `scratchgpt train`, before a run directory exists."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from scratchgpt.cli import main as cli_main
from scratchgpt.data import BatchLoader
from scratchgpt.errors import DataError


def _edit_meta(**changes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        meta.update(changes)
        (d / "meta.json").write_text(json.dumps(meta))
    return edit


def _truncate(d: Path) -> None:
    data = (d / "train.bin").read_bytes()
    (d / "train.bin").write_bytes(data[:-2])


def _extend(d: Path) -> None:
    with open(d / "val.bin", "ab") as f:
        f.write(b"\0\0")


def _odd(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    del meta["train_tokens"], meta["val_tokens"]  # a hand-written meta.json: only whole ids can be checked
    (d / "meta.json").write_text(json.dumps(meta))
    with open(d / "train.bin", "ab") as f:
        f.write(b"\0")


def _fewer_chars(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:-3]
    (d / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "truncated": (_truncate, "train.bin' holds"),
    "longer": (_extend, "val.bin' holds"),
    "missing": (lambda d: (d / "val.bin").unlink(), "val.bin' is missing"),
    "odd_bytes": (_odd, "not a whole number of uint16 ids"),
    "dtype_too_narrow": (_edit_meta(vocab_size=70_000), "uint16 ids cannot hold a vocabulary of 70000"),
    "dtype_not_ids": (_edit_meta(dtype="float32"), "float32 ids cannot hold"),
    "tokenizer_vs_vocab": (_fewer_chars, "its tokenizer has"),
    "not_json": (lambda d: (d / "meta.json").write_text("{"), "meta.json' is damaged: not valid JSON"),
    # the schema check (scratchgpt/schema.py): the meta.json without "tokenizer" was a KeyError, exit 1
    "no_tokenizer": (lambda d: _drop(d, "tokenizer"), "meta.json' is damaged: 'tokenizer' is missing"),
    "tokenizer_not_object": (_edit_meta(tokenizer="char"), "'tokenizer' must be an object"),
    "vocab_not_number": (_edit_meta(vocab_size="65"), "'vocab_size' must be a whole number"),
    "negative_count": (_edit_meta(train_tokens=-1), "'train_tokens' must be a whole number of at least 0"),
    "not_object": (lambda d: (d / "meta.json").write_text("[1, 2]"), "expected an object, got a list of 2"),
    "bad_shards": (_edit_meta(shards={"train": [{"file": "train.bin"}], "val": []}), "'shards.train[0].tokens' is missing"),
    "directory": (lambda d: ((d / "meta.json").unlink(), (d / "meta.json").mkdir()), "meta.json' is damaged: it is a directory"),
}


def _drop(d: Path, key: str) -> None:
    meta = json.loads((d / "meta.json").read_text())
    del meta[key]
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_data_is_one_sentence(damage, small_text_dir, tmp_path, capsys):
    d = tmp_path / "data"
    shutil.copytree(small_text_dir, d)
    BatchLoader(d, "train", 8, 2)  # intact: loads
    edit, fragment = DAMAGE[damage]
    edit(d)
    with pytest.raises(DataError, match="again"):
        BatchLoader(d, "train", 8, 2)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndir = "{d}"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 8\nblock_size = 8\n'
                      '[train]\nmax_iters = 1\ndevice = "cpu"\n')
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0] and "again" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()

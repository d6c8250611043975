"""Data preparation and the batch loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchgpt.data import BatchLoader, load_meta, prepare_text
from scratchgpt.errors import DataError


def test_shakespeare_prepare_counts(shakespeare_dir):
    meta = load_meta(shakespeare_dir)
    assert meta["vocab_size"] == 65
    assert meta["tokenizer"]["chars"] == "\n !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["source_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert meta["dtype"] == "uint16"
    train = np.fromfile(shakespeare_dir / "train.bin", dtype=np.uint16)
    assert len(train) == 1_003_854 and train.max() < 65


def test_batches_are_shifted_windows_and_seeded(shakespeare_dir):
    data = np.fromfile(shakespeare_dir / "train.bin", dtype=np.uint16)
    a = BatchLoader(shakespeare_dir, "train", 32, 8, seed=5)
    b = BatchLoader(shakespeare_dir, "train", 32, 8, seed=5)
    x, y = a.get_batch()
    x2, y2 = b.get_batch()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every row is a real window of the file
    for row in x.numpy():
        starts = np.flatnonzero(data[: len(data) - 32] == row[0])
        assert any(np.array_equal(data[s : s + 32], row) for s in starts)
    x3, _ = a.get_batch()
    assert not torch.equal(x, x3)


def test_sequential_covers_the_split(small_text_dir):
    loader = BatchLoader(small_text_dir, "val", 16, 5)
    n = len(loader.data)
    seen = sum(y.numel() for _, y in loader.sequential())
    assert seen == ((n - 1) // 16) * 16


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"abc", "too short"),
    (b"hello \xff\xfe world" * 10, "not UTF-8"),
])
def test_prepare_text_bad_input_writes_nothing(tmp_path, content, message):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        prepare_text(src, out, block_size=8)
    assert not out.exists() or not any(out.iterdir())


def test_prepare_text_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare_text(tmp_path / "nope.txt", tmp_path / "out")


def test_missing_data_dir_names_prepare(tmp_path):
    with pytest.raises(DataError, match="scratchgpt prepare"):
        load_meta(tmp_path / "nothing")


def test_prepare_text_roundtrip(tmp_path):
    text = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\n" * 20
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    meta = prepare_text(tmp_path / "in.txt", tmp_path / "out")
    ids = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    chars = json.loads((tmp_path / "out" / "meta.json").read_text())["tokenizer"]["chars"]
    assert "".join(chars[i] for i in ids) == text
    assert meta["vocab_size"] == len(set(text))

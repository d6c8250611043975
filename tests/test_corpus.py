"""Streaming corpus preparation (corpus.py, corpus_sources.py) and the loader reading its shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchgpt import corpus, fileio
from scratchgpt.cli import main
from scratchgpt.corpus import is_val, prepare_corpus
from scratchgpt.data import BatchLoader, load_meta
from scratchgpt.errors import DataError
from scratchgpt.tokenizers import CharTokenizer, Tokenizer

REPO = Path(__file__).resolve().parents[1]
tiktoken = pytest.importorskip("tiktoken")


class ByteTokenizer(Tokenizer):
    """Byte-level tiktoken encoding built locally (no download), with <|endoftext|> = 256."""

    kind = "bytes"
    vocab_size = 257
    eot_token = eot_id = 256

    def __init__(self):
        self.enc = tiktoken.Encoding(
            name="bytes", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
            mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={"<|endoftext|>": 256})

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def to_json(self) -> dict:
        return {"kind": self.kind}


class WideTokenizer(Tokenizer):
    """A vocabulary over 65536 for the price of nothing: id = code point + 65536; end of text is the last id."""

    kind = "wide"
    vocab_size = 70_000
    eot_token = 69_999

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 65536 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 65536) for i in ids)

    def to_json(self) -> dict:
        return {"kind": self.kind}


def read_split(out: Path, split: str) -> np.ndarray:
    meta = load_meta(out)
    return np.concatenate([np.fromfile(out / s["file"], dtype=meta["dtype"]) for s in meta["shards"][split]])


def docs_of(ids: np.ndarray, eot: int) -> list[list[int]]:
    """Split a token stream at end-of-text ids (every document ends with one)."""
    assert ids[-1] == eot
    cuts = np.flatnonzero(ids == eot)
    return [ids[a + 1 if i else 0:b].tolist() for i, (a, b) in enumerate(zip(np.r_[0, cuts[:-1]], cuts, strict=True))]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> None:
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")


TEXTS = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 7) for i in range(300)]


def test_txt_paragraphs_are_documents_and_char_output_reads_back(tmp_path):
    paragraphs = [f"para {i} line one\nline two of {i}" for i in range(200)]
    (tmp_path / "in.txt").write_text("\n\n".join(paragraphs) + "\n\n\n", encoding="utf-8")
    res = prepare_corpus([tmp_path / "in.txt"], tmp_path / "out", "char", workers=1, shard_tokens=500)
    meta, chars = res.meta, res.meta["tokenizer"]["chars"]
    assert meta["eot_id"] is None and meta["dtype"] == "uint16" and "\n" in chars
    for split, val in (("train", False), ("val", True)):
        expected = [p for p in paragraphs if is_val(p, 0.1) == val]
        assert "".join(chars[i] for i in read_split(tmp_path / "out", split)) == "".join(p + "\n\n" for p in expected)
        assert meta[f"{split}_documents"] == len(expected)
    assert 0 < meta["val_documents"] < meta["train_documents"]
    assert all(s["tokens"] == 500 for s in meta["shards"]["train"][:-1])


@pytest.mark.parametrize("mode, expected", [
    ("file", ["a\nb\n\nc"]),
    ("line", ["a", "b", "c"]),
    ("paragraph", ["a\nb", "c"]),
])
def test_txt_docs_modes(tmp_path, mode, expected):
    (tmp_path / "in.txt").write_text("a\nb\n\nc\n", encoding="utf-8")
    pieces = list(corpus.read_documents(corpus.expand_inputs([str(tmp_path / "in.txt")]), txt_docs=mode))
    assert pieces == [(t, True) for t in expected]


def test_long_text_document_streams_in_pieces_on_one_side(tmp_path, monkeypatch):
    monkeypatch.setattr("scratchgpt.corpus_sources.PIECE_CHARS", 64)
    long_doc = "".join(f"line {i} of a long document\n" for i in range(100)).rstrip("\n")
    (tmp_path / "in.txt").write_text(long_doc + "\n\n" + "\n\n".join(TEXTS[:40]), encoding="utf-8")
    pieces = list(corpus.read_documents(corpus.expand_inputs([str(tmp_path / "in.txt")])))
    first_doc = [p for p, _ in pieces[: [end for _, end in pieces].index(True) + 1]]
    assert len(first_doc) > 10 and "".join(first_doc) == long_doc and sum(e for _, e in pieces) == 41
    prepare_corpus([tmp_path / "in.txt"], tmp_path / "out", ByteTokenizer(), workers=2, val_fraction=0.3)
    side = "val" if is_val(pieces[0][0], 0.3) else "train"
    got = [ByteTokenizer().decode(d) for d in docs_of(read_split(tmp_path / "out", side), 256)]
    assert long_doc in got  # whole and contiguous, though it was tokenized piece by piece


def test_jsonl_documents_end_with_eot_split_by_document_and_workers_agree(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS[:150] + ["", "   "])
    write_jsonl(tmp_path / "b.jsonl", TEXTS[150:])
    one = prepare_corpus([tmp_path], tmp_path / "one", ByteTokenizer(), workers=1, shard_tokens=1000).meta
    two = prepare_corpus([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "two", ByteTokenizer(),
                         workers=2, shard_tokens=1000).meta
    assert one["shards"] == two["shards"] and one["eot_id"] == 256
    for s in one["shards"]["train"] + one["shards"]["val"]:
        assert (tmp_path / "one" / s["file"]).read_bytes() == (tmp_path / "two" / s["file"]).read_bytes()
    tok = ByteTokenizer()
    for split, val in (("train", False), ("val", True)):
        got = [tok.decode(d) for d in docs_of(read_split(tmp_path / "two", split), 256)]
        assert got == [t for t in TEXTS if is_val(t, 0.1) == val]  # in corpus order, empty ones skipped
    assert one["train_documents"] + one["val_documents"] == len(TEXTS)
    assert one["sources"] == [str((tmp_path / n).resolve()) for n in ("a.jsonl", "b.jsonl")]


def test_parquet_column_in_row_group_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = TEXTS[:100] + [None]
    pq.write_table(pa.table({"content": texts, "n": list(range(101))}), tmp_path / "c.parquet", row_group_size=7)
    meta = prepare_corpus([tmp_path / "c.parquet"], tmp_path / "out", ByteTokenizer(), text_field="content",
                          workers=2).meta
    got = [ByteTokenizer().decode(d) for d in docs_of(read_split(tmp_path / "out", "train"), 256)]
    assert got == [t for t in TEXTS[:100] if not is_val(t, 0.1)]
    assert meta["train_documents"] + meta["val_documents"] == 100


def test_parquet_without_the_column_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), tmp_path / "bad.parquet")
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(tmp_path / "bad.parquet"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "has no 'text' column (it has: body, n)" in err and "bad.parquet" in err
    assert not out.exists()


def test_bad_jsonl_line_fails_cleanly_and_keeps_old_output(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    first = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", ByteTokenizer(), workers=1).meta
    before = sorted(os.listdir(tmp_path / "out"))
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write('{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"line 301 of '.*a.jsonl' has no 'text' field \(it has: body\)"):
        prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", ByteTokenizer(), workers=2)
    assert sorted(os.listdir(tmp_path / "out")) == before and load_meta(tmp_path / "out") == first


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    meta = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", WideTokenizer(), shard_tokens=1000, workers=2).meta
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    ids = read_split(tmp_path / "out", "train")
    assert ids.max() == 69_999 and ids.min() >= 65536
    assert (tmp_path / "out" / "train_000000.bin").stat().st_size == 4000


@pytest.mark.parametrize("tok, shard_tokens, n_texts", [(ByteTokenizer(), 1000, 100), (WideTokenizer(), 1000, 100),
                                                       (WideTokenizer(), 7, 12)])  # shards shorter than a window
def test_loader_reads_across_shards_like_one_file(tmp_path, tok, shard_tokens, n_texts):
    write_jsonl(tmp_path / "a.jsonl", TEXTS[:n_texts])
    out = tmp_path / "out"
    meta = prepare_corpus([tmp_path / "a.jsonl"], out, tok, shard_tokens=shard_tokens, workers=1,
                          val_fraction=0.3).meta
    assert len(meta["shards"]["train"]) > 3
    # the same tokens as one file in the one-file layout: the loader must draw the very same windows
    flat = tmp_path / "flat"
    flat.mkdir()
    for split in ("train", "val"):
        read_split(out, split).tofile(flat / f"{split}.bin")
    (flat / "meta.json").write_text(json.dumps({k: meta[k] for k in ("tokenizer", "vocab_size", "dtype")}))
    for split in ("train", "val"):
        a, b = BatchLoader(out, split, 32, 16, seed=3), BatchLoader(flat, split, 32, 16, seed=3)
        assert a.data is None and a.n_tokens == len(b.data)
        for _ in range(5):
            (xa, ya), (xb, yb) = a.get_batch(), b.get_batch()
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa[:, 1:], ya[:, :-1])
        seq_a, seq_b = list(a.sequential()), list(b.sequential())
        assert len(seq_a) == len(seq_b) and all(torch.equal(p[0], q[0]) for p, q in zip(seq_a, seq_b, strict=True))
    # every window start, including those across shard boundaries
    stream = read_split(out, "train")
    loader = BatchLoader(out, "train", 8, 4)
    starts = np.arange(0, len(stream) - 8)
    assert np.array_equal(loader._windows(starts), stream[starts[:, None] + np.arange(9)])


def test_loader_rejects_a_truncated_shard(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", ByteTokenizer(), shard_tokens=1000, workers=1)
    shard = tmp_path / "out" / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="train_000001.bin' holds 1998 bytes"):
        BatchLoader(tmp_path / "out", "train", 8, 4)


def mtimes(d: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in d.iterdir()}


def test_rerun_is_a_noop_and_a_changed_input_or_option_redoes_it(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    first = prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=1000, workers=1)
    assert not first.skipped
    before = mtimes(out)
    again = prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=1000, workers=2)
    assert again.skipped and again.meta == first.meta and mtimes(out) == before
    bigger = prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=5000, workers=1)
    assert not bigger.skipped
    assert sorted(f for f in os.listdir(out) if f.endswith(".bin")) == sorted(
        s["file"] for v in bigger.meta["shards"].values() for s in v)  # the old, smaller shards are gone
    write_jsonl(tmp_path / "a.jsonl", TEXTS[:200])
    assert not prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=5000, workers=1).skipped


def test_cli_rerun_says_nothing_to_do(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    args = ["prepare", "text", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out"), "--workers", "1"]
    assert main(args) == 0
    assert "documents in 2 shards" in capsys.readouterr().err
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_small_single_text_file_keeps_the_one_file_layout(tmp_path):
    (tmp_path / "in.txt").write_text("hello there, small corpus\n" * 50, encoding="utf-8")
    assert main(["prepare", "text", "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "out")]) == 0
    assert "shards" not in load_meta(tmp_path / "out") and (tmp_path / "out" / "train.bin").is_file()


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["write", "publish"])
def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, where):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    calls = {"n": 0}
    real_write, real_publish = corpus._ShardWriter.write, fileio._fsync_dir

    def failing_write(self, ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom
        real_write(self, ids)

    def failing_publish(path):  # atomic_dir's last step before the swap
        if path.name.endswith(".tmp"):
            raise Boom
        real_publish(path)

    monkeypatch.setattr(corpus, "BATCH_CHARS", 2000)
    if where == "write":
        monkeypatch.setattr(corpus._ShardWriter, "write", failing_write)
    else:
        monkeypatch.setattr(fileio, "_fsync_dir", failing_publish)
    with pytest.raises(Boom):  # workers=2: the pool is torn down, nothing hangs
        prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=1000, workers=2)
    assert not (out / "meta.json").exists()
    # not a single shard under its final name, no staging left
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]
    with pytest.raises(DataError, match="not prepared"):
        BatchLoader(out, "train", 8, 4)
    monkeypatch.setattr(corpus._ShardWriter, "write", real_write)
    monkeypatch.setattr(fileio, "_fsync_dir", real_publish)
    res = prepare_corpus([tmp_path / "a.jsonl"], out, ByteTokenizer(), shard_tokens=1000, workers=1)
    assert not res.skipped and not [p for p in out.iterdir() if p.name.startswith(".")]


def fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_dataset_streams_through_datasets(tmp_path, monkeypatch):
    seen = {}

    def load_dataset(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": t, "url": "u"} for t in TEXTS])

    fake_datasets(monkeypatch, load_dataset)
    meta = prepare_corpus(["hf:Skylion007/openwebtext"], tmp_path / "out", ByteTokenizer(), workers=1,
                          hf_config="sample-10BT").meta
    assert seen == {"name": "Skylion007/openwebtext", "config": "sample-10BT", "split": "train", "streaming": True}
    assert meta["sources"] == ["hf:Skylion007/openwebtext"]
    assert meta["train_documents"] + meta["val_documents"] == len(TEXTS)


def test_hf_dataset_offline_or_without_datasets_is_one_sentence(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openwebtext' on the Hub (LocalEntryNotFoundError)")

    args = ["prepare", "text", "--input", "hf:openwebtext", "--out", str(tmp_path / "out"), "--workers", "1"]
    fake_datasets(monkeypatch, offline)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "network" in err and "--input" in err
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the `datasets` package" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_memory_stays_bounded_on_a_corpus_several_times_the_cap(tmp_path):
    """Peak RSS (prepare and its workers, measured in a fresh process) barely grows from 1 MB to 75 MB."""
    cap_mb, corpus_mb = 25, 75
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz    .,\n", dtype=np.uint8)
    for name, size_mb in (("small", 1), ("big", corpus_mb)):
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
            written = 0
            while written < size_mb * 1e6:
                block = alphabet[rng.integers(0, len(alphabet), 1 << 20)].tobytes().decode()
                lines = "".join(json.dumps({"text": block[i:i + 2000]}) + "\n" for i in range(0, len(block), 2000))
                f.write(lines)
                written += len(lines)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(CharTokenizer([chr(c) for c in alphabet]).to_json()))
    script = (
        "import json, resource, sys\n"
        "from scratchgpt.corpus import prepare_corpus\n"
        "prepare_corpus([sys.argv[1]], sys.argv[2], sys.argv[3], workers=2, shard_tokens=10_000_000)\n"
        "print(json.dumps([resource.getrusage(w).ru_maxrss for w in "
        "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]))\n"
    )
    peaks = {}
    for name in ("small", "big"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.jsonl"), str(tmp_path / name),
                               str(tmp_path / "tok")], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        peaks[name] = json.loads(done.stdout.splitlines()[-1])  # KiB: [main process, largest worker]
    assert (tmp_path / "big.jsonl").stat().st_size > 3 * cap_mb * 1e6
    assert load_meta(tmp_path / "big")["train_tokens"] > 60_000_000
    for small, big in zip(peaks["small"], peaks["big"], strict=True):
        assert big - small < cap_mb * 1024, peaks


def test_tokenizer_from_a_prepared_directory_and_learned_kinds_need_training(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    first = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "one", "char", workers=1).meta
    again = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "two", str(tmp_path / "one"), workers=1).meta
    assert again["tokenizer"] == first["tokenizer"] and again["shards"] == first["shards"]
    assert (tmp_path / "one" / "train_000000.bin").read_bytes() == (tmp_path / "two" / "train_000000.bin").read_bytes()
    with pytest.raises(DataError, match="scratchgpt tokenizer train"):
        prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "three", "bpe", workers=1)
    assert not (tmp_path / "three").exists()


def test_our_bpe_tokenizer_separates_documents_with_its_endoftext(tmp_path):
    from scratchgpt.tokenizers.bpe_train import train_bpe

    tok = train_bpe(TEXTS[:50], 300)
    write_jsonl(tmp_path / "a.jsonl", TEXTS + ["a forged <|endoftext|> stays text"])
    meta = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", tok, workers=2).meta
    assert meta["eot_id"] == tok.eot_id and meta["tokenizer"] == tok.to_json()
    got = []
    for split in ("train", "val"):
        got += [tok.decode(d) for d in docs_of(read_split(tmp_path / "out", split), tok.eot_id)]
    assert sorted(got) == sorted(TEXTS + ["a forged <|endoftext|> stays text"])

"""Data: turn text into token-id files, and serve random training windows from them.

Owns `prepare_text` / `prepare_shakespeare_char` (text -> `train.bin`, `val.bin`, `meta.json` in a data
directory), `load_meta`, and `BatchLoader` (random windows from a memory-mapped split, seeded, y = x shifted
by one; pinned and non-blocking on CUDA). A split is one `{split}.bin`, or, when meta.json lists `shards`
(written by `corpus.prepare_corpus`), several files read as if laid end to end. Does not know models or
training.

A prepared directory is written whole or not at all, and only where `outputs.claim` allows (a new or empty
directory, or prepared data): `prepare_text` builds it in a staging directory beside the target and swaps it
in (`Claim.stage`), carrying over files that are not its outputs (such as a downloaded input.txt), so an
interrupted re-prepare leaves the old data complete. Loading checks the files
against `meta.json` (each file's size against its token count and dtype, the dtype against the vocabulary,
the vocabulary against the tokenizer JSON where that is cheap) and calls a damaged directory one sentence.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import outputs
from .distributed import shard_bounds
from .errors import DataError
from .fileio import atomic_path, read_utf8, sha256_file
from .schema import Int, ListOf, OneOf, Opt, Str, read_json
from .tokenizers import Tokenizer, build_tokenizer

META_FORMAT = 1
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_ENV = "SCRATCHGPT_TINYSHAKESPEARE"


def _write_ids(path: Path, ids: np.ndarray, dtype: np.dtype) -> None:
    with open(path, "wb") as f:  # f.write, not tofile: a full disk is then an OSError with its errno
        f.write(memoryview(np.ascontiguousarray(ids, dtype=dtype)))


def prepare_text(
    input_path: str | Path,
    out_dir: str | Path,
    tokenizer: str | Tokenizer = "char",
    val_fraction: float = 0.1,
    block_size: int = 8,
    vocab_size: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Tokenize one UTF-8 file into out_dir (first 1 - val_fraction for train, the rest for val).

    tokenizer: char | word | bpe | spm (learned from this text; vocab_size caps word, sets bpe and spm),
    gpt2, a directory holding tokenizer.json, or a tokenizer object.
    out_dir must be new, empty or prepared data (`outputs.claim`; chat data only with `force`). Every check
    runs before anything is written, and out_dir is replaced in one step, so a failure or a kill leaves
    out_dir as it was.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be between 0 and 1, got {val_fraction}")
    out = outputs.claim(out_dir, outputs.DATA, "prepare text", force=force, variant="text", inputs=[input_path])
    text = read_utf8(input_path)
    tok = build_tokenizer(tokenizer, text, vocab_size) if isinstance(tokenizer, str) else tokenizer
    ids = tok.encode_array(text)
    n_train = int(len(ids) * (1 - val_fraction))
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    for name, part in splits.items():
        if len(part) < block_size + 1:
            raise DataError(
                f"input file '{input_path}' is too short: its {name} split has {len(part)} tokens, fewer than "
                f"one block of {block_size} + 1 (use a longer file or pass a smaller --block-size)"
            )
    dtype = np.dtype(np.uint16) if tok.vocab_size <= 65536 else np.dtype(np.uint32)
    meta = {
        "format": META_FORMAT,
        "tokenizer": tok.to_json(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": int(len(splits["train"])),
        "val_tokens": int(len(splits["val"])),
        "source": str(Path(input_path).resolve()),
        "source_sha256": sha256_file(input_path),
    }
    with out.stage() as stage:
        for name, part in splits.items():
            _write_ids(stage / f"{name}.bin", part, dtype)
        (stage / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def fetch_shakespeare(dest: Path, instead: str = f"pass --input PATH or set {SHAKESPEARE_ENV}=PATH to a local "
                                                 "copy of input.txt") -> Path:
    """Download tiny Shakespeare to dest; offline, a DataError saying what to do `instead` (the command line's
    words by default; the lecture notebook passes its own)."""
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
            data = r.read()
    except (urllib.error.URLError, OSError):
        raise DataError(f"could not download tiny Shakespeare (no network?); {instead}") from None
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def shakespeare_source(input_path: str | Path | None = None, out_dir: str | Path = "data/shakespeare_char") -> Path:
    """Tiny Shakespeare's text file: input_path, else $SCRATCHGPT_TINYSHAKESPEARE, else out_dir/input.txt
    (downloaded there the first time, once out_dir is known to be one prepare may write)."""
    src = input_path or os.environ.get(SHAKESPEARE_ENV)
    if src:
        if not Path(src).is_file():
            how = "the input" if input_path else f"${SHAKESPEARE_ENV}"
            raise DataError(f"tiny Shakespeare not found at '{src}' ({how}); pass the path of its input.txt")
        return Path(src)
    return _downloaded(Path(out_dir))


def _downloaded(out: Path, force: bool = False) -> Path:
    """out/input.txt, downloaded there the first time, once out is known to be one prepare may write."""
    dest = out / "input.txt"
    if not dest.is_file():
        outputs.claim(out, outputs.DATA, "prepare shakespeare_char", force=force, variant="text", inputs=[dest])
        fetch_shakespeare(dest)
    return dest


def prepare_shakespeare_char(input_path: str | Path | None = None, out_dir: str | Path = "data/shakespeare_char",
                             force: bool = False) -> dict[str, Any]:
    """Prepare tiny Shakespeare at character level: from --input, else $SCRATCHGPT_TINYSHAKESPEARE, else the web
    (downloaded into out_dir/input.txt, once out_dir is known to be one prepare may write). `prepare_text`
    claims out_dir before it reads anything."""
    out = Path(out_dir)
    src = Path(input_path or os.environ.get(SHAKESPEARE_ENV) or out / "input.txt")
    if src == out / "input.txt":
        _downloaded(out, force)
    return prepare_text(src, out, tokenizer="char", force=force)


_TOKENS = Int(0)
_SHARDS = ListOf({"file": Str(), "tokens": _TOKENS})
# meta.json: what `prepare` writes (text, corpus shards, chat data) and what a hand-written one must hold
META = {"tokenizer": {"kind": Str()}, "vocab_size": Int(1, 2**32), "dtype": Str(), "format": Opt(Int(1)),
        "data_format": Opt(OneOf("text", "chat")), "train_tokens": Opt(_TOKENS), "val_tokens": Opt(_TOKENS),
        "shards": Opt({"train": _SHARDS, "val": _SHARDS})}


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """Read a prepared directory's meta.json (checked against `META`: one sentence for what is wrong); a missing
    or incomplete directory names `scratchgpt prepare`."""
    d = Path(data_dir)
    meta_path = d / "meta.json"
    if not meta_path.exists():
        raise DataError(
            f"data directory '{d}' is not prepared (no meta.json); run `scratchgpt prepare shakespeare_char` "
            f"or `scratchgpt prepare text --input FILE --out {d}` first"
        )
    again = f"prepare '{d}' again"
    meta = read_json(meta_path, f"'{meta_path}' is damaged", DataError, f"; {again}", META)
    try:
        dtype = np.dtype(meta["dtype"])
    except TypeError:
        raise DataError(f"'{meta_path}' is damaged: 'dtype' {meta['dtype']!r} is not a type of ids; {again}") from None
    files = _expected_files(meta)
    vocab = meta["vocab_size"]
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)) or not 1 <= vocab <= 2 ** (8 * dtype.itemsize):
        raise DataError(f"'{meta_path}' is damaged: {dtype.name} ids cannot hold a vocabulary of {vocab}; {again}")
    declared = _declared_vocab(meta.get("tokenizer"))
    if declared is not None and declared != vocab:
        raise DataError(f"'{meta_path}' is damaged: its tokenizer has {declared} tokens but it says the vocabulary "
                        f"has {vocab}; {again}")
    for name, tokens in files:
        path = d / name
        if Path(name).name != name or not path.is_file():
            raise DataError(f"'{path}' is missing; {again}")
        size = path.stat().st_size
        if tokens is None and size % dtype.itemsize:
            raise DataError(f"'{path}' holds {size} bytes, not a whole number of {dtype.name} ids; {again}")
        if tokens is not None and size != tokens * dtype.itemsize:
            raise DataError(f"'{path}' holds {size} bytes, not the {tokens} {dtype.name} ids meta.json "
                            f"lists; {again}")
    return meta


def _expected_files(meta: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(file name, token count) of every token file meta.json describes (None: a hand-written meta.json
    without counts, where only whole ids can be checked)."""
    if "shards" in meta:
        return [(e["file"], e["tokens"]) for split in ("train", "val") for e in meta["shards"][split]]
    return [(f"{split}.bin", meta.get(f"{split}_tokens")) for split in ("train", "val")]


def _declared_vocab(tok: Any) -> int | None:
    """The vocabulary a tokenizer JSON implies, where that needs no building (char, word, bpe, gpt2)."""
    if not isinstance(tok, dict):
        return None
    kind = tok.get("kind")
    try:
        if kind == "char":
            return len(set(tok["chars"])) + len(tok.get("special_tokens", []))
        if kind == "word":
            return len(tok["words"]) + 1  # + the unknown-word id
        if kind == "bpe":
            return len(tok["vocab"]) + len(tok["special_tokens"])
        if kind == "gpt2":
            return int(tok["n_vocab"])
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _open_shards(data_dir: Path, split: str, meta: dict[str, Any], dtype: np.dtype) -> list[np.memmap]:
    """Memory-map a split's shards in order, checking each against the token count meta.json gives it."""
    try:
        entries = [(str(e["file"]), int(e["tokens"])) for e in meta["shards"][split]]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"'{data_dir / 'meta.json'}' is damaged (no shard list for {split}); prepare the data again") from None
    shards = []
    for name, tokens in entries:
        path = data_dir / name
        if Path(name).name != name or not path.is_file():
            raise DataError(f"shard '{path}' is missing; prepare the data again")
        if path.stat().st_size != tokens * dtype.itemsize:
            raise DataError(f"shard '{path}' holds {path.stat().st_size} bytes, not the {tokens} {dtype.name} ids "
                            "meta.json lists; prepare the data again")
        if tokens:
            shards.append(np.memmap(path, dtype=dtype, mode="r"))
    return shards


class BatchLoader:
    """Random (x, y) windows of block_size tokens from one split, drawn with its own seeded generator.

    `batch_size` is the global batch. With `shard` = (rank, world) every rank draws the same global batch
    from the same generator and keeps its own rows [rank * B / world, (rank + 1) * B / world): ranks see
    disjoint rows, together exactly what one process would see, and the generator's state means the same
    thing at any world size (so a run can resume on a different number of processes).
    """

    def __init__(self, data_dir: str | Path, split: str, block_size: int, batch_size: int,
                 device: torch.device | str = "cpu", seed: int = 0, shard: tuple[int, int] = (0, 1)):
        meta = load_meta(data_dir)
        dtype = np.dtype(meta["dtype"])
        if "shards" in meta:
            self.shards = _open_shards(Path(data_dir), split, meta, dtype)
        else:
            path = Path(data_dir) / f"{split}.bin"
            if not path.is_file():
                raise DataError(f"'{path}' is missing; prepare the data again")
            self.shards = [np.memmap(path, dtype=dtype, mode="r")]
        self.data = self.shards[0] if len(self.shards) == 1 else None  # the one array, when there is one
        self._begins = np.cumsum([0] + [len(s) for s in self.shards])  # (n_shards + 1,) global offsets
        self.n_tokens = int(self._begins[-1])
        if self.n_tokens < block_size + 1:
            raise DataError(
                f"the {split} split of '{data_dir}' has {self.n_tokens} tokens, too few for one block of "
                f"{block_size} + 1; lower model.block_size or prepare more text"
            )
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world = shard
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(block_size + 1)

    def _to_device(self, xy: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(xy.astype(np.int64))  # (B, T + 1)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        return t[:, :-1], t[:, 1:]  # x (B, T), y (B, T): y is x shifted by one

    def _windows(self, starts: np.ndarray) -> np.ndarray:
        """(B, T + 1) windows at offsets into the split; a window may run across shard boundaries."""
        if self.data is not None:
            return self.data[starts[:, None] + self._offsets]
        shard = np.searchsorted(self._begins, starts, side="right") - 1
        local = starts - self._begins[shard]
        out = np.empty((len(starts), self.block_size + 1), dtype=self.shards[0].dtype)
        for s in np.unique(shard):
            rows = np.flatnonzero(shard == s)
            inside = rows[local[rows] + self.block_size + 1 <= len(self.shards[s])]
            out[inside] = self.shards[s][local[inside][:, None] + self._offsets]
            for r in np.setdiff1d(rows, inside):  # rare with large shards: stitch the window together
                need, i, pos, parts = self.block_size + 1, int(s), int(local[r]), []
                while need:
                    parts.append(self.shards[i][pos:pos + need])
                    need, i, pos = need - len(parts[-1]), i + 1, 0
                out[r] = np.concatenate(parts)
        return out

    def _mine(self, starts: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (all of them for one process)."""
        lo, hi = shard_bounds(len(starts), self.rank, self.world)
        return starts[lo:hi]

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(self.n_tokens - self.block_size, (self.batch_size,), generator=self.generator)
        return self._to_device(self._windows(self._mine(starts.numpy())))

    def sequential(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every non-overlapping window of the split once, in order (for evaluation on the whole split)."""
        n_windows = (self.n_tokens - 1) // self.block_size
        for first in range(0, n_windows, self.batch_size):
            starts = self._mine(np.arange(first, min(first + self.batch_size, n_windows)) * self.block_size)
            yield self._to_device(self._windows(starts))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

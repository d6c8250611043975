"""Corpora larger than memory: stream documents into sharded token files, on every core.

Owns `prepare_corpus`: documents from `corpus_sources` (plain text, JSONL, Parquet, Hugging Face datasets)
are grouped into batches of about `BATCH_CHARS`, tokenized by a pool of worker processes (results kept in
corpus order, at most a few batches per worker in flight, so memory stays bounded whatever the corpus size)
and streamed into `train_000000.bin`, `val_000000.bin`, ... shards of at most `shard_tokens` ids (uint16 when
the vocabulary fits, else uint32), described by `meta.json`. Does not read the shards back: see
`data.BatchLoader`.

- Documents end with the tokenizer's end-of-text id (`<|endoftext|>`). A tokenizer without one (char)
  ends them with "\\n\\n" instead, so paragraphs of a text file read back as the text.
- Train/val is split by document, from a hash of its text (of its first piece for a long one): stable,
  reproducible, independent of the number of workers, and identical documents always land on the same side.
- `--tokenizer char` builds the vocabulary in a first streaming pass (plus "\\n").
- The whole directory is built in a hidden staging directory beside it and swapped in when every document
  is done (`outputs.claim(...).stage()`: only into a new or empty directory or prepared data; files that are
  not prepare's outputs are carried over): an interrupted or failed run leaves the previous data complete
  and usable, and the next run removes its staging.
  `meta.json` holds a fingerprint of the inputs (paths, sizes, mtimes), the tokenizer and the options;
  rerunning with a matching fingerprint and intact shards is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs
from .corpus_sources import Source, check_sources, expand_inputs, parse_jsonl, read_documents
from .errors import DataError
from .tokenizers import CharTokenizer, Tokenizer

CORPUS_FORMAT = 2  # meta.json with a "shards" list (format 1: one train.bin and val.bin)
DEFAULT_SHARD_TOKENS = 100_000_000
BATCH_CHARS = 1 << 20  # text per work item: large enough to amortise inter-process transfer
BATCH_DOCS = 4096
IN_FLIGHT_PER_WORKER = 2
CHAR_SEPARATOR = "\n\n"
@dataclass
class Prepared:
    meta: dict[str, Any]
    skipped: bool  # True when the output was already complete and nothing was done


def resolve_tokenizer(spec: str) -> Tokenizer | None:
    """None for `char` (its vocabulary comes from the corpus, in a first pass); otherwise what `--tokenizer`
    names without needing the corpus: gpt2, or a directory (tokenizer.json, a prepared meta.json, GPT-2
    files). Learned kinds (word, bpe, spm) are trained first with `scratchgpt tokenizer train`."""
    if spec == "char":
        return None
    from .tokenizers.resolve import get_tokenizer

    return get_tokenizer(spec)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's share), not the host's
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def is_val(text: str, val_fraction: float) -> bool:
    """A document's side of the split: a hash of its text, so it never depends on order or workers."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


# ---- work done in the worker processes (state set once per worker by _init_worker) ----------------------

_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)
    if "tokenizer" in state:
        _STATE["encode"] = state["tokenizer"].encode_array  # plain text: "<|endoftext|>" typed is text


def _init_pool_worker(state: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it ends the pool
    _init_worker(state)


def _text(payload: Any) -> str:
    if isinstance(payload, tuple):  # a JSONL line: (bytes, file index, line number)
        line, i, lineno = payload
        return parse_jsonl(line, f"line {lineno} of '{_STATE['files'][i]}'", _STATE["text_field"])
    return payload


def _chars_batch(batch: list[tuple[Any, bool | None, bool]]) -> set[str]:
    seen: set[str] = set()
    for payload, _, _ in batch:
        seen.update(_text(payload))
    return seen


def _encode_batch(batch: list[tuple[Any, bool | None, bool]]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Tokenize one batch: (train ids, val ids, train documents, val documents), in corpus order."""
    st = _STATE
    parts: tuple[list, list] = ([], [])
    docs = [0, 0]
    for payload, split, end in batch:
        text = _text(payload)
        if split is None:  # a whole document (a long one's split was decided from its first piece)
            if not text or text.isspace():
                continue
            split = is_val(text, st["val_fraction"])
        ids = st["encode"](text)
        if len(ids):
            parts[split].append(np.asarray(ids, dtype=np.int64))
        if end:
            parts[split].append(st["separator"])
            docs[split] += 1
    out = []
    for p in parts:
        ids = np.concatenate(p) if p else np.empty(0, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= st["vocab_size"]):
            raise ValueError(f"the tokenizer produced id {ids.max()} outside its vocabulary of {st['vocab_size']}")
        out.append(ids.astype(st["dtype"]))
    return out[0], out[1], docs[0], docs[1]


# ---- the main process: batching, the pool, shard writing ------------------------------------------------


def _work_items(pieces: Iterable[tuple[Any, bool]], val_fraction: float) -> Iterator[tuple[Any, bool | None, bool]]:
    """(payload, split, end): split is None for a whole document (the worker hashes it), else the side the
    first piece of a long document decided, carried to its later pieces."""
    first, split = True, None
    for payload, end in pieces:
        if first:
            split = None if end else is_val(payload, val_fraction)
        yield payload, split, end
        first = end


def _batches(items: Iterable[tuple[Any, bool | None, bool]]) -> Iterator[list]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item[0][0] if isinstance(item[0], tuple) else item[0])
        if size >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _parallel(fn: Callable, batches: Iterable[list], workers: int, state: dict[str, Any]) -> Iterator[Any]:
    """fn over batches in order; at most IN_FLIGHT_PER_WORKER batches per worker are queued at a time (a
    plain Pool.imap would read the whole corpus into its task queue when reading outpaces tokenizing)."""
    if workers <= 1:
        _init_worker(state)
        for b in batches:
            yield fn(b)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_init_pool_worker, initargs=(state,)) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.apply_async(fn, (b,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _ShardWriter:
    """Append ids to `{split}_{n:06d}.bin` files of at most shard_tokens ids each, fsynced when full."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._f = None
        self._n = 0

    def write(self, ids: np.ndarray) -> None:
        while ids.size:
            if self._f is None:
                self._name = f"{self.split}_{len(self.shards):06d}.bin"
                self._f = open(self.directory / self._name, "wb")  # noqa: SIM115 (kept open across writes)
                self._n = 0
            take = min(ids.size, self.shard_tokens - self._n)
            self._f.write(memoryview(np.ascontiguousarray(ids[:take])))  # a full disk: an OSError with its errno
            self._n += take
            ids = ids[take:]
            if self._n == self.shard_tokens:
                self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            self.shards.append({"file": self._name, "tokens": self._n})

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + (self._n if self._f is not None else 0)


def _fingerprint(sources: list[Source], tokenizer_id: str, options: dict[str, Any]) -> str:
    files = []
    for s in sources:
        if s.kind == "hf":
            files.append([s.kind, s.name])
        else:
            st = os.stat(s.name)
            files.append([s.kind, s.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"format": CORPUS_FORMAT, "sources": files, "tokenizer": tokenizer_id, "options": options},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _finished(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The existing meta.json when out already holds this exact output with every shard intact."""
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint:
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        for entries in meta["shards"].values():
            for e in entries:
                if (out / e["file"]).stat().st_size != int(e["tokens"]) * itemsize:
                    return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta


def prepare_corpus(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    tokenizer: str | Tokenizer = "char",
    *,
    val_fraction: float = 0.1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_field: str = "text",
    txt_docs: str = "paragraph",
    workers: int | None = None,
    hf_config: str | None = None,
    hf_split: str = "train",
    block_size: int = 8,
    progress: bool = False,
    force: bool = False,
) -> Prepared:
    """Tokenize text/JSONL/Parquet files, directories of them or `hf:NAME` datasets into sharded out_dir.

    tokenizer: a name (`char`, `gpt2`, a tokenizer directory) or a tokenizer object. out_dir must be new,
    empty or prepared data (`outputs.claim`; chat data only with `force`). Checks that need no tokenizing run
    before anything is written; a failure later leaves out_dir as it was.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be between 0 and 1, got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    inputs = [str(i) for i in inputs]
    target = outputs.claim(out_dir, outputs.DATA, "prepare text", force=force, variant="text",
                           inputs=[i for i in inputs if not i.startswith("hf:")])
    sources = expand_inputs(inputs)
    check_sources(sources, text_field, txt_docs)
    tok = resolve_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    tokenizer_id = "char" if tok is None else hashlib.sha256(
        json.dumps(tok.to_json(), sort_keys=True).encode()).hexdigest()
    options = {"val_fraction": val_fraction, "shard_tokens": shard_tokens, "text_field": text_field,
               "txt_docs": txt_docs, "hf_config": hf_config, "hf_split": hf_split}
    fingerprint = _fingerprint(sources, tokenizer_id, options)
    if (done := _finished(target.target, fingerprint)) is not None:
        return Prepared(done, skipped=True)

    workers = max(1, workers or _usable_cores())
    with target.stage() as staging:
        meta = _build(sources, staging, tok, workers, progress, block_size=block_size, val_fraction=val_fraction,
                      shard_tokens=shard_tokens, text_field=text_field, txt_docs=txt_docs, hf_config=hf_config,
                      hf_split=hf_split)
        meta["fingerprint"] = fingerprint
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Prepared(meta, skipped=False)


def _build(sources: list[Source], staging: Path, tok: Tokenizer | None, workers: int, progress: bool, *,
           block_size: int, val_fraction: float, shard_tokens: int, text_field: str, txt_docs: str,
           hf_config: str | None, hf_split: str) -> dict[str, Any]:
    from .console import progress_bar  # tqdm: only in the parent, not in every worker's imports

    def batches() -> Iterator[list]:
        pieces = read_documents(sources, text_field, txt_docs, hf_config, hf_split)
        return _batches(_work_items(pieces, val_fraction))

    state: dict[str, Any] = {"files": [s.name for s in sources], "text_field": text_field,
                             "val_fraction": val_fraction}
    if tok is None:  # char: the vocabulary is every character of the corpus
        chars = set(CHAR_SEPARATOR)
        for seen in _parallel(_chars_batch, batches(), workers, state):
            chars |= seen
        tok = CharTokenizer(sorted(chars))
    vocab = tok.vocab_size
    dtype = dtype_for(vocab)
    eot = tok.eot_token
    separator = [eot] if eot is not None else [int(i) for i in tok.encode_array(CHAR_SEPARATOR)]
    state.update(tokenizer=tok, vocab_size=vocab, dtype=dtype, separator=np.array(separator, dtype=np.int64))

    writers = [_ShardWriter(staging, "train", shard_tokens), _ShardWriter(staging, "val", shard_tokens)]
    docs = [0, 0]
    bar = progress_bar(desc="tokenizing", unit="tok", unit_scale=True, enabled=progress)
    try:
        for train_ids, val_ids, train_docs, val_docs in _parallel(_encode_batch, batches(), workers, state):
            writers[0].write(train_ids)
            writers[1].write(val_ids)
            docs[0] += train_docs
            docs[1] += val_docs
            bar.update(len(train_ids) + len(val_ids))
    finally:
        bar.close()
        for w in writers:
            w.close()
    for w, n in zip(writers, docs, strict=True):
        if w.tokens < block_size + 1:
            raise DataError(
                f"the corpus is too small: its {w.split} split has {w.tokens} tokens from {n} documents, fewer "
                f"than one block of {block_size} + 1 (add documents, raise --val-fraction, or split text "
                "files into more documents with --txt-docs paragraph or line)"
            )
    return {
        "format": CORPUS_FORMAT,
        "tokenizer": tok.to_json(),
        "vocab_size": vocab,
        "dtype": dtype.name,
        "eot_id": eot,
        "separator": separator,
        "train_tokens": writers[0].tokens,
        "val_tokens": writers[1].tokens,
        "train_documents": docs[0],
        "val_documents": docs[1],
        "shards": {w.split: w.shards for w in writers},
        "sources": [f"hf:{s.name}" if s.kind == "hf" else s.name for s in sources],
        "options": {"val_fraction": val_fraction, "shard_tokens": shard_tokens, "text_field": text_field,
                    "txt_docs": txt_docs, "hf_config": hf_config, "hf_split": hf_split},
    }


LEGACY_MAX_BYTES = 64 << 20  # a single text file up to this size may go through data.prepare_text in memory


def wants_corpus(inputs: list[str], options: dict[str, Any]) -> bool:
    """Whether `prepare text` should stream through `prepare_corpus`: anything but one plain-text file small
    enough for `data.prepare_text` (in memory, tail split, train.bin/val.bin) given with no corpus option."""
    if options or len(inputs) != 1 or str(inputs[0]).startswith("hf:"):
        return True
    p = Path(inputs[0])
    return not p.is_file() or p.suffix.lower() in (".jsonl", ".parquet") or p.stat().st_size > LEGACY_MAX_BYTES

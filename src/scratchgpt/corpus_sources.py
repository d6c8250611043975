"""Document readers for corpora larger than memory: plain text, JSONL, Parquet and Hugging Face datasets.

Owns turning `--input` values into `Source`s (files, directories of them, `hf:NAME`), checking them before
anything is written, and streaming their documents with bounded memory. Does not tokenize or write: see
`corpus.py`.

What a document is:
- `.txt` (and any file of another suffix named directly): by `txt_docs`. `paragraph` (the default): blocks
  separated by one or more blank lines; `file`: the whole file; `line`: every line. Trailing newlines are
  dropped. A document longer than `PIECE_CHARS` is read in pieces, so a file with no blank lines still
  streams.
- `.jsonl`: one JSON object a line; its `text_field` is the document (parsed in the worker processes).
- `.parquet`: one row a document, the `text_field` column, read a batch of rows at a time (pyarrow).
- `hf:NAME`: one row a document, streamed through `datasets` (online; offline, a clear error).
Empty and whitespace-only documents are skipped. A directory contributes its `.txt`, `.jsonl` and
`.parquet` files, recursively, in sorted order, skipping hidden ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

PIECE_CHARS = 1 << 20  # a plain-text document longer than this is read (and tokenized) in pieces
SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
TXT_DOCS = ("paragraph", "file", "line")
PIP_HINT = "pip install 'scratchgpt[corpus]'"


@dataclass(frozen=True)
class Source:
    kind: str  # txt | jsonl | parquet | hf
    name: str  # an absolute file path, or a Hugging Face dataset name


def expand_inputs(inputs: list[str]) -> list[Source]:
    """Resolve --input values into sources: files, directories (recursively) and `hf:NAME`."""
    if not inputs:
        raise DataError("no input given; pass --input FILE, DIRECTORY or hf:DATASET")
    out: list[Source] = []
    for item in map(str, inputs):
        if item.startswith("hf:"):
            if not item[3:]:
                raise DataError("'hf:' needs a dataset name, e.g. hf:Skylion007/openwebtext")
            out.append(Source("hf", item[3:]))
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise DataError(f"directory '{p}' holds no .txt, .jsonl or .parquet files")
            out += [Source(SUFFIXES[f.suffix.lower()], str(f.resolve())) for f in files]
        elif p.is_file():
            out.append(Source(SUFFIXES.get(p.suffix.lower(), "txt"), str(p.resolve())))
        else:
            raise DataError(f"input '{p}' not found")
    return out


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading Parquet files needs pyarrow ({PIP_HINT})") from None
    return pq


def check_sources(sources: list[Source], text_field: str, txt_docs: str) -> None:
    """Everything that can be checked before a token is written: a bad input fails with nothing written."""
    if txt_docs not in TXT_DOCS:
        raise DataError(f"--txt-docs must be one of {', '.join(TXT_DOCS)}, got '{txt_docs}'")
    for src in sources:
        if src.kind != "parquet":
            continue
        pq = _pyarrow_parquet()
        try:
            schema = pq.read_schema(src.name)
        except Exception:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a file that is not Parquet
            raise DataError(f"'{src.name}' is not a readable Parquet file") from None
        if text_field not in schema.names:
            raise DataError(f"Parquet file '{src.name}' has no '{text_field}' column (it has: "
                            f"{', '.join(schema.names) or 'none'}); pass --text-field NAME")
        kind = str(schema.field(text_field).type)
        if kind not in ("string", "large_string", "string_view"):
            raise DataError(f"column '{text_field}' of Parquet file '{src.name}' holds {kind}, not text; "
                            "pass --text-field NAME")


def read_documents(sources: list[Source], text_field: str = "text", txt_docs: str = "paragraph",
                   hf_config: str | None = None, hf_split: str = "train") -> Iterator[tuple[object, bool]]:
    """Yield (payload, end) pieces in corpus order; a document is the pieces up to one with end=True.

    A payload is a str, or for JSONL a (line bytes, file index, line number) tuple that `parse_jsonl`
    turns into text in a worker, so JSON parsing runs on every core.
    """
    for i, src in enumerate(sources):
        if src.kind == "txt":
            yield from _txt_pieces(Path(src.name), txt_docs)
        elif src.kind == "jsonl":
            with open(src.name, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield (line, i, lineno), True
        elif src.kind == "parquet":
            for text in _parquet_texts(src.name, text_field):
                yield text, True
        else:
            for text in _hf_texts(src.name, hf_config, hf_split, text_field):
                yield text, True


def _txt_pieces(path: Path, mode: str) -> Iterator[tuple[str, bool]]:
    buf: list[str] = []
    size, open_doc = 0, False  # open_doc: pieces of the current document were already yielded

    def flush(end: bool) -> str:
        nonlocal size
        text = "".join(buf)
        buf.clear()
        size = 0
        return text.rstrip("\n") if end else text

    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.readline(PIECE_CHARS):  # at most PIECE_CHARS at a time, even for one long line
                if mode != "file" and chunk.endswith("\n") and not chunk.strip():  # a blank line
                    if mode == "paragraph" and (buf or open_doc):
                        yield flush(True), True
                        open_doc = False
                    continue
                buf.append(chunk)
                size += len(chunk)
                if mode == "line" and chunk.endswith("\n"):
                    yield flush(True), True
                    open_doc = False
                elif size >= PIECE_CHARS:
                    yield flush(False), False
                    open_doc = True
            if buf or open_doc:
                yield flush(True), True
    except UnicodeDecodeError as e:
        raise DataError(f"input file '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None


def parse_jsonl(line: bytes, where: str, text_field: str) -> str:
    """The text of one JSONL line; a bad line is a DataError naming where it is."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where} is not valid JSON") from None
    if not isinstance(obj, dict) or text_field not in obj:
        keys = ", ".join(obj) if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise DataError(f"{where} has no '{text_field}' field (it has: {keys or 'none'}); pass --text-field NAME")
    text = obj[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"the '{text_field}' field on {where} is a JSON {type(text).__name__}, not a string")
    return text


def _parquet_texts(path: str, text_field: str) -> Iterator[str]:
    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text:
                yield text


def _hf_error(name: str, e: BaseException) -> DataError:
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return DataError(f"could not read the Hugging Face dataset '{name}' ({detail}); it needs a network "
                     "connection (or a warm `datasets` cache), else pass local .txt, .jsonl or .parquet files "
                     "with --input")


def _hf_texts(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading the Hugging Face dataset '{name}' needs the `datasets` package ({PIP_HINT}), "
                        "or pass local .txt, .jsonl or .parquet files with --input") from None
    try:
        rows = iter(datasets.load_dataset(name, config, split=split, streaming=True))
    except Exception as e:  # offline, unknown name, bad config or split: `datasets` raises many kinds
        raise _hf_error(name, e) from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # the connection can also drop mid-stream
            raise _hf_error(name, e) from None
        if text_field not in row:
            raise DataError(f"Hugging Face dataset '{name}' has no '{text_field}' column (it has: "
                            f"{', '.join(row)}); pass --text-field NAME")
        if row[text_field]:
            yield row[text_field]

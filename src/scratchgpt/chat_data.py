"""Conversation data: JSONL conversations tokenized with a run's chat template, and the loader that batches them.

Owns `prepare_chat` (JSONL files of `{"messages": [...]}` lines -> a data directory, built beside the target
and swapped in whole, where `outputs.claim` allows) and `ChatLoader` (batches of whole conversations). Does not own the template
(`chat.py`), text data (`data.py`) or training.

A chat data directory holds, per split, `{split}.bin` (the conversations' token ids laid end to end),
`{split}.learn.bin` (one byte per token: 1 where the token is a target to learn, the assistants' text and
closing tokens) and `{split}.offsets.bin` (int64: where each conversation starts, and the end), plus
`meta.json` (`data_format: "chat"`, the chat tokenizer, counts, the context they were checked against).

A batch is `batch_size` conversations drawn at random (a seeded generator, so resuming is exact), one per
row, each padded to the block: `x` holds the conversation's tokens, `y` the next token where that token is
learned and -1 everywhere else (prompt, padding), so the mean cross-entropy covers exactly the assistants'
spans, and a row never attends to another conversation (there is no packing to leak across).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import chat, outputs
from .data import META_FORMAT, load_meta
from .distributed import shard_bounds
from .errors import DataError, UserError
from .schema import read_jsonl
from .tokenizers import Tokenizer

DATA_FORMAT = "chat"


def read_conversations(path: str | Path) -> list[list[chat.Message]]:
    """Every line of a JSONL file as a checked conversation, read one line at a time (a line longer than
    `limits.MAX_LINE_BYTES` is refused before it is held); a bad line is an error naming file and line."""
    out = []
    for n, obj in read_jsonl(path, {"messages": list}, "conversations file"):
        where = f"conversations file '{path}' line {n}"
        try:
            messages = chat.parse_messages(obj["messages"], where)
        except chat.ChatError as e:
            raise DataError(str(e)) from None
        if not any(m.role == "assistant" for m in messages):
            raise DataError(f"{where} has no assistant message: nothing to learn from it")
        out.append(messages)
    if not out:
        raise DataError(f"conversations file '{path}' holds no conversations")
    return out


def prepare_chat(inputs: list[str | Path], out_dir: str | Path, tokenizer: Tokenizer, block_size: int,
                 val_fraction: float = 0.1, source: str = "", force: bool = False) -> dict[str, Any]:
    """Tokenize conversations with the chat template into out_dir: the last `val_fraction` of them (at least
    one) for validation. Every conversation must fit one window of `block_size` tokens (+1, the last target).
    `tokenizer` is the run's; the template's special tokens are added to it. out_dir must be new, empty or
    prepared data (`outputs.claim`; text data only with `force`), and what in it is not prepared data (the
    input files, the user's notes) is kept. Nothing is written unless everything checks out."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be between 0 and 1, got {val_fraction}")
    out = outputs.claim(out_dir, outputs.DATA, "prepare chat", force=force, variant=DATA_FORMAT, inputs=inputs)
    tok = chat.chat_tokenizer(tokenizer)
    convs, where = [], []
    for path in inputs:
        for i, messages in enumerate(read_conversations(path)):
            convs.append(messages)
            where.append((path, i))
    if len(convs) < 2:
        raise DataError("chat data needs at least two conversations (one to train on, one to validate with)")
    rendered = []
    for messages, (path, i) in zip(convs, where, strict=True):
        try:
            ids, learn = chat.render(tok, messages)
        except UserError as e:
            raise DataError(f"conversation {i + 1} of '{path}' cannot be tokenized: {e}") from None
        if len(ids) > block_size + 1:
            raise DataError(f"conversation {i + 1} of '{path}' is {len(ids)} tokens, longer than the context of "
                            f"{block_size} (+1); shorten it or fine-tune a model with a longer block")
        rendered.append((ids, learn))
    n_val = max(1, int(round(len(rendered) * val_fraction)))
    splits = {"train": rendered[:-n_val], "val": rendered[-n_val:]}
    dtype = np.dtype(np.uint16) if tok.vocab_size <= 65536 else np.dtype(np.uint32)
    meta = {"format": META_FORMAT, "data_format": DATA_FORMAT, "tokenizer": tok.to_json(),
            "vocab_size": tok.vocab_size, "dtype": dtype.name, "block_size": block_size, "source": source}
    with out.stage() as stage:
        for name, part in splits.items():
            ids = np.concatenate([np.asarray(c[0], dtype=np.int64) for c in part])
            learn = np.concatenate([np.asarray(c[1], dtype=np.uint8) for c in part])
            offsets = np.cumsum([0] + [len(c[0]) for c in part]).astype(np.int64)
            (stage / f"{name}.bin").write_bytes(ids.astype(dtype).tobytes())
            (stage / f"{name}.learn.bin").write_bytes(learn.tobytes())
            (stage / f"{name}.offsets.bin").write_bytes(offsets.tobytes())
            meta[f"{name}_tokens"] = int(len(ids))
            meta[f"{name}_conversations"] = len(part)
        (stage / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


class ChatLoader:
    """Batches of whole conversations, one per row, padded to the block; the `BatchLoader` interface
    (`get_batch`, `sequential`, `state`, `set_state`, per-rank rows of one global batch)."""

    def __init__(self, data_dir: str | Path, split: str, block_size: int, batch_size: int,
                 device: torch.device | str = "cpu", seed: int = 0, shard: tuple[int, int] = (0, 1)):
        d = Path(data_dir)
        meta = load_meta(d)
        if meta.get("data_format") != DATA_FORMAT:
            raise DataError(f"'{d}' holds text, not conversations; set data.format = \"text\" or prepare it with "
                            "`scratchgpt prepare chat`")
        dtype = np.dtype(meta["dtype"])
        try:
            self.ids = np.fromfile(d / f"{split}.bin", dtype=dtype).astype(np.int64)
            self.learn = np.fromfile(d / f"{split}.learn.bin", dtype=np.uint8).astype(bool)
            self.offsets = np.fromfile(d / f"{split}.offsets.bin", dtype=np.int64)
        except OSError as e:
            raise DataError(f"'{d}' is damaged ({e.strerror or e}); prepare the data again") from None
        n = len(self.offsets) - 1
        if (n < 1 or len(self.learn) != len(self.ids) or self.offsets[0] != 0 or self.offsets[-1] != len(self.ids)
                or np.any(np.diff(self.offsets) <= 0)):
            raise DataError(f"'{d}' is damaged (its {split} files disagree); prepare the data again")
        longest = int(np.diff(self.offsets).max())
        if longest > block_size + 1:
            raise DataError(f"'{d}' holds a conversation of {longest} tokens, longer than model.block_size "
                            f"{block_size} (+1); prepare it for this model's context")
        self.n_conversations, self.n_tokens = n, len(self.ids)
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world = shard
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def _rows(self, convs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        x = np.zeros((len(convs), T), dtype=np.int64)
        y = np.full((len(convs), T), -1, dtype=np.int64)
        for r, c in enumerate(convs):
            a, b = self.offsets[c], self.offsets[c + 1]
            ids, learn = self.ids[a:b], self.learn[a:b]
            n = len(ids) - 1  # inputs 0..n-1 predict tokens 1..n
            x[r, :n] = ids[:-1]
            y[r, :n] = np.where(learn[1:], ids[1:], -1)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.device.type == "cuda":
            return xt.pin_memory().to(self.device, non_blocking=True), yt.pin_memory().to(self.device, non_blocking=True)
        return xt.to(self.device), yt.to(self.device)

    def _mine(self, convs: np.ndarray) -> np.ndarray:
        lo, hi = shard_bounds(len(convs), self.rank, self.world)
        return convs[lo:hi]

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        convs = torch.randint(self.n_conversations, (self.batch_size,), generator=self.generator).numpy()
        return self._rows(self._mine(convs))

    def sequential(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every conversation once, in order (evaluation over the whole split)."""
        for first in range(0, self.n_conversations, self.batch_size):
            yield self._rows(self._mine(np.arange(first, min(first + self.batch_size, self.n_conversations))))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


__all__ = ["ChatLoader", "DATA_FORMAT", "prepare_chat", "read_conversations"]

"""Training a byte-level BPE vocabulary: the algorithm of the lecture, made fast enough for real corpora.

Owns `train_bpe` (texts -> `BPETokenizer`) and `train_bpe_files` (the `scratchgpt tokenizer train` entry:
files in, a directory with tokenizer.json out, where `outputs.claim` allows). Does not own encoding (`bpe.py`).

The algorithm: split the text into chunks with the GPT-style regex (merges never cross a chunk boundary),
then start from the 256 bytes and repeatedly merge the most frequent adjacent pair into a new token.
Three standard tricks keep it fast (a 4,096 vocabulary on tiny Shakespeare takes seconds, not hours):
  - count each distinct chunk once, with its frequency (1.1 MB of Shakespeare is ~15,000 distinct chunks);
  - keep pair counts and, for each pair, the set of chunks containing it, and after a merge update only the
    chunks that contained the merged pair, by the difference in their pair counts;
  - pick the most frequent pair from a heap whose stale entries are re-checked when popped.
Ties go to the smallest (left id, right id), so training is deterministic. Special-token strings in the
training text are cut out first (they separate documents; they are not text to learn from).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write_json, read_utf8
from ..outputs import TOKENIZER, claim
from .bpe import ENDOFTEXT, BPETokenizer
from .pretokenize import DEFAULT_PATTERN, SPLIT_PATTERNS, compile_pattern

TOKENIZER_FILE = "tokenizer.json"


def check_vocab_size(vocab_size: int, n_special: int) -> None:
    if vocab_size < 256 + n_special:
        raise UserError(
            f"vocabulary size {vocab_size} is too small: a byte-level BPE needs at least 256 byte tokens plus "
            f"{n_special} special token{'s' if n_special != 1 else ''}, so at least {256 + n_special}"
        )


def _resolve_pattern(pattern: str) -> str:
    return SPLIT_PATTERNS.get(pattern, pattern)


def count_chunks(texts: Iterable[str], pattern: str, special_tokens: Sequence[str] = (ENDOFTEXT,)) -> Counter[str]:
    """How often each distinct pre-split chunk occurs across texts."""
    split = compile_pattern(pattern)
    cut = re.compile("|".join(map(re.escape, special_tokens))) if special_tokens else None
    counts: Counter[str] = Counter()
    for text in texts:
        for part in cut.split(text) if cut else [text]:
            counts.update(split.findall(part))
    return counts


def _pairs(word: list[int]) -> Counter[tuple[int, int]]:
    return Counter(pairwise(word))


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
              pattern: str = DEFAULT_PATTERN, progress: Callable[[int, int], None] | None = None) -> BPETokenizer:
    """Learn merges until the vocabulary (bytes + merges + specials) has vocab_size tokens or no pair is left.

    pattern is a name in SPLIT_PATTERNS ('gpt4', 'gpt2') or a regex. progress(done, total) is called now and then.
    """
    special_tokens = list(special_tokens)
    check_vocab_size(vocab_size, len(special_tokens))
    pattern = _resolve_pattern(pattern)
    n_merges = vocab_size - 256 - len(special_tokens)
    counts = count_chunks(texts, pattern, special_tokens)

    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    pair_count: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks that (may) contain it
    for w, (word, f) in enumerate(zip(words, freqs, strict=True)):
        for pair, k in _pairs(word).items():
            pair_count[pair] += k * f
            where[pair].add(w)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    by_bytes = {t: i for i, t in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_count.get((a, b), 0)
        if count != -neg:  # stale entry: re-queue with the current count
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        merged = vocab[a] + vocab[b]
        new = by_bytes.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            by_bytes[merged] = new
            merges.append((a, b))
        # else: the same bytes were already made by another merge; chunks reuse that token, no new id
        touched: set[tuple[int, int]] = set()
        for w in where.pop((a, b), ()):
            word = words[w]
            new_word = _merge_word(word, a, b, new)
            if len(new_word) == len(word):
                continue  # the pair left this chunk in an earlier merge
            f = freqs[w]
            delta = _pairs(new_word)
            delta.subtract(_pairs(word))
            for pair, k in delta.items():
                if k:
                    pair_count[pair] += k * f
                    if k > 0:
                        where[pair].add(w)
                        touched.add(pair)
            words[w] = new_word
        pair_count.pop((a, b), None)
        for pair in touched:
            c = pair_count[pair]
            if c > 0:
                heapq.heappush(heap, (-c, *pair))
        if progress and len(merges) % 256 == 0:
            progress(len(merges), n_merges)
    if progress:
        progress(len(merges), n_merges)
    return BPETokenizer(vocab, merges, pattern, special_tokens)


def train_bpe_files(inputs: Sequence[str | Path], vocab_size: int, out_dir: str | Path,
                    special_tokens: Sequence[str] = (ENDOFTEXT,), pattern: str = DEFAULT_PATTERN,
                    progress: Callable[[int, int], None] | None = None) -> BPETokenizer:
    """Train on UTF-8 files and write out_dir/tokenizer.json; every check runs before anything is written.
    out_dir must be new, empty or a tokenizer's (`outputs.claim`); it is swapped in whole, with any other
    file it held kept."""
    out = claim(out_dir, TOKENIZER, "tokenizer train", inputs=inputs)
    if pattern not in SPLIT_PATTERNS:
        raise UserError(f"split pattern '{pattern}' is not one of {', '.join(SPLIT_PATTERNS)}")
    check_vocab_size(vocab_size, len(special_tokens))
    if not inputs:
        raise UserError("give at least one --input file to train on")
    texts = [read_utf8(p) for p in inputs]
    tok = train_bpe(texts, vocab_size, special_tokens, pattern, progress)
    with out.stage() as stage:  # a refused write is one DiskError sentence
        atomic_write_json(stage / TOKENIZER_FILE, tok.to_json())
    return tok

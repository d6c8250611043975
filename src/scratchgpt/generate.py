"""The generation engine: one token-level decode core, and the text-level `Engine` the CLI, REPL and API use.

Owns:
- `KVCache`: keys and values of every layer for a fixed number of lanes, preallocated (float32 on a CPU
  whatever the weights' dtype: see `cache_dtype`).
- `DecodeCore`: the one decode loop. Rows of one or many requests generate together, one cache lane each.
  It owns the lanes (a request's rows take the first free ones; releasing a request moves the rows in the
  highest lanes into the holes, so the active lanes are always 0..A-1), each row's slot, prefill (prompts of
  equal length in one forward, across requests; a prompt's samples share its prefill), the decode step (one
  forward for every active row; on CUDA a graph captured per bucket of batch sizes), sliding the window past
  the block, sampling (each request with its own settings and random generator) and log-probabilities. It is
  token-only: no text, no tokenizer. Its per-request state (lanes, generator, prompt scores) lives in its own
  records, never in the caller's `Request`. `Engine` drives it for one batch; the server's continuous
  batching (`serve/scheduler.py`) drives the same core with requests that come and go.
- `check_prompts` and `PromptError`: the one check of prompt lengths and token ids (the core runs it on
  every request; the engine and the server run it before any work, the server answering a 400 from it).
- `Engine`: text in, text out (tokenizing, cropping an over-long prompt and saying so once, a conversation's
  reply through the chat template, older turns dropped to fit), plus the token-level `token_steps` and
  `generate_ids`. Each request's text, stop strings, the end-of-text rule and finish reasons come from its
  `completion.Completion`, as they do in the server.
- `reference_steps`: the uncached reference that tests and benchmarks compare the core against.
Does not own sampling maths (`sampling.py`), a request's rows and events (`completion.py`), the model
(`models/`) or HTTP (`serve/`).

Rows. Every row (one sample of one prompt) owns one lane of the cache; its context starts at slot 0 and its
token at slot j has position j, exactly as if it were generated alone. The decode step writes each row's new
key at its own slot and masks keys past it, so a batch gives each row what generating it alone gives.

Models. The core asks a model only for `block_size`, `vocab_size`, `cache_shape()` (layers, heads, head
size) and the one forward signature `model(idx, cache=, attn_mask=, positions=, last_only=)`; the GPT and the
bigram both provide them (a bigram's cache has no layers), so nothing here checks which model it is.

Sliding policy (one policy, used by the core and by the uncached reference alike). The context is a window
of the token sequence of at most W = block_size tokens; positions count from the window's start. A prompt
longer than W keeps its last W tokens (the `Engine` says so once; the server refuses it unless asked to
truncate). When the next token would make the window W + 1 long, the window moves forward and the core
re-prefills it into the row's lane, which also gives the next logits. How far it moves is the `window`
setting:
- "full" (default): the window becomes the last W tokens, every token: exactly what the lecture's
  crop-to-the-last-block computes. With learned absolute positions every position shifts at each step, so
  past the block each token costs one full-window prefill (the cache speeds up everything before that).
- "half": the window becomes the last ceil(W / 2) tokens (the oldest half is dropped), so past the block
  the cost is one half-window prefill per W / 2 tokens: 5-10x faster for long generations, with a context
  that shrinks to half a block at each jump.
The reference runs the model on exactly the same window at every step, so the two agree token for token.

CUDA. The decode step (a bucket of lanes, whole-window attention under a mask, positions and slots read
from device tensors that the step itself advances) is captured once per bucket as a CUDA graph when the core
is built, and replayed once per token. Sampling runs eagerly on the device without host syncs; `Engine`
brings token ids back every `sync_every` tokens (16 on CUDA, 1 elsewhere), where stop strings are checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import chat
from .completion import Completion, Event, TextPiece
from .console import echo
from .errors import UserError
from .sampling import (
    MAX_NEW_TOKENS_CAP,
    SamplingSettings,
    sample_next,
    settings_from,
    stop_token_ids,
    token_logprobs,
)
from .tokenizers import Tokenizer

__all__ = ["DecodeCore", "Engine", "KVCache", "cache_dtype", "MAX_NEW_TOKENS_CAP", "PromptError", "PromptScores", "Request",
           "Sampled", "SamplingSettings", "check_prompts", "encode_prompt", "generate", "keep_after_slide",
           "reference_steps", "stream"]


def keep_after_slide(block_size: int, window: str = "half") -> int:
    """Tokens the window keeps when it slides: all W ("full": the last block) or the newest ceil(W / 2)."""
    return block_size if window == "full" else block_size - block_size // 2


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Prompt ids; an empty prompt starts from <|endoftext|> if the tokenizer has one, else a newline."""
    if text == "":
        if tokenizer.eot_token is not None:
            return [tokenizer.eot_token]
        try:
            ids = tokenizer.encode("\n")
        except UserError:
            ids = []
        return ids or [0]
    return tokenizer.encode(text)


class PromptError(UserError):
    """A prompt the decode core cannot take: `index` is which prompt; `too_long` when it is longer than the
    context (the server's code context_length_exceeded), else it is empty or holds ids outside the vocabulary
    (`detail` then says which, after the word "prompt")."""

    def __init__(self, detail: str, index: int = 0, too_long: bool = False):
        super().__init__(detail if too_long else f"prompt {detail}")
        self.detail, self.index, self.too_long = detail, index, too_long


def prompt_too_long(length: int, context: int, index: int = 0) -> PromptError:
    return PromptError(f"this model's context length is {context} tokens, but the prompt has {length:,}", index, True)


def check_prompts(prompts: list[list[int]], context: int, vocab: int, *, longer: bool = False) -> None:
    """Every prompt 1 to `context` tokens long (any length from 1 when `longer`: the caller keeps its end) with
    ids in [0, vocab): the one place these are checked. Raises `PromptError` naming the first bad prompt."""
    for i, p in enumerate(prompts):
        if not p:
            raise PromptError("needs at least one token", i)
        if not longer and len(p) > context:
            raise prompt_too_long(len(p), context, i)
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= vocab:
            raise PromptError(f"token ids must be in [0, {vocab}), got {lo}..{hi}", i)


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator for one request, seeded by its settings (a fresh random seed when none is given)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(6), "little"))
    return gen


# ---- the cache ----------------------------------------------------------------------------------------------

class KVCache:
    """Keys and values for every layer, preallocated: each (n_layer, lanes, n_head, capacity, head_dim)."""

    def __init__(self, n_layer: int, lanes: int, n_head: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(n_layer, lanes, n_head, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lanes, self.capacity = lanes, capacity

    @classmethod
    def for_model(cls, model: nn.Module, lanes: int, dtype: torch.dtype | None = None) -> KVCache:
        """A cache for `model`, in `dtype` (default: `cache_dtype` of its weights and device)."""
        n_layer, n_head, head_dim = model.cache_shape()
        p = next(model.parameters())
        return cls(n_layer, lanes, n_head, model.block_size, head_dim, dtype or cache_dtype(p.dtype, p.device), p.device)


def cache_dtype(weights: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a KV cache holds for a model whose weights are `weights` on `device`: the weights' own, except
    on a CPU, where it is float32 and the decode step's single-query attention runs in float32 (the model
    attends in its cache's dtype). Measured on a 2-core AVX-512 BF16 CPU (docs/benchmarks.md): PyTorch's bf16
    attention kernel for one query packs every key at every call and took 142-798 us a layer at 130-1024 keys
    (batch 1), against 38-149 us in float32; the lecture's written-out attention in bf16 was 119-217 us. It is
    also the more accurate: scores and their softmax in float32. Prefill still attends in the activations'
    dtype, as scoring the same text does. The price is memory: twice a bf16 cache (GPT-2 124M: 75 MB a lane at
    1,024 positions)."""
    return torch.float32 if device.type == "cpu" and weights.is_floating_point else weights


class _PrefillView:
    """The model's cache argument during a prefill: the T new keys of `lanes` go to slots 0..T-1."""

    pos = 0

    def __init__(self, cache: KVCache, lanes: torch.Tensor):
        self.cache, self.lanes = cache, lanes  # lanes (G,)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)  # k, v (G, nh, T, hs)
        self.cache.k[layer][self.lanes, :, :T] = k.to(self.cache.k.dtype)
        self.cache.v[layer][self.lanes, :, :T] = v.to(self.cache.v.dtype)
        return k, v  # the window starts here: nothing older to attend to (in the activations' dtype, as scoring)


class _DecodeView:
    """The model's cache argument during a decode step over lanes 0..b-1: one new key per lane at its slot."""

    def __init__(self, cache: KVCache, lanes: torch.Tensor, slots: torch.Tensor, view_len: int):
        self.cache, self.lanes, self.slots, self.view_len = cache, lanes, slots, view_len  # lanes, slots (b,)

    @property
    def pos(self) -> int:
        return self.view_len - 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.lanes.size(0)
        kl, vl = self.cache.k[layer], self.cache.v[layer]  # (lanes, nh, cap, hs)
        kl[self.lanes, :, self.slots] = k[:, :, 0].to(kl.dtype)  # k (b, nh, 1, hs): lane i's key to slot slots[i]
        vl[self.lanes, :, self.slots] = v[:, :, 0].to(vl.dtype)
        return kl[:b, :, : self.view_len], vl[:b, :, : self.view_len]  # (b, nh, S, hs); the mask hides the rest


# ---- requests -----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Request:
    """Rows that generate together with one settings and one random generator: `n` samples of each prompt,
    prompt-major (all samples of prompt 0, then of prompt 1, ...). Prompts are token ids, each 1 to block_size
    long. `logprobs` (k >= 0) asks for the model's log-probability of each sampled token and its k most likely
    alternatives; `prompt_logprobs` for the prompt tokens' too (computed at prefill). The core reads it and
    never writes it: its lanes and scores are the core's own records."""

    prompts: list[list[int]]
    n: int
    settings: SamplingSettings
    logprobs: int | None = None
    prompt_logprobs: bool = False
    generator: torch.Generator | None = None  # None: the core makes one from settings.seed

    @property
    def width(self) -> int:
        return len(self.prompts) * self.n

    @property
    def needs_prefill(self) -> bool:
        return self.settings.max_new_tokens > 0 or self.prompt_logprobs


@dataclass(eq=False)
class _Lane:
    """The core's record of one row: the lane it holds."""

    request: Request
    lane: int
    ctx: int  # tokens now in the lane (host mirror of the slot, known without a sync)
    keep: int  # tokens the window keeps when it slides (the request's `window` setting)


# a prompt's own tokens scored at prefill: chosen (T-1,), top values (T-1, k), top ids (T-1, k) for tokens 1..T-1
PromptScores = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(eq=False)
class _Admitted:
    """The core's record of one request while it holds lanes."""

    lanes: list[_Lane]  # in row order
    generator: torch.Generator
    lane_index: torch.Tensor  # (rows,) the rows' lanes, in row order
    prompt_scores: list[PromptScores | None]


@dataclass
class Sampled:
    """One step's tokens for a request's rows (on the device), with log-probabilities when asked for."""

    request: Request
    tokens: torch.Tensor  # (rows,)
    logprobs: torch.Tensor | None = None  # (rows,)
    top_values: torch.Tensor | None = None  # (rows, k)
    top_ids: torch.Tensor | None = None  # (rows, k)


# ---- the decode core ----------------------------------------------------------------------------------------

class DecodeCore:
    """Rows generating together in the lanes of one KV cache. Use: `add` requests (their prompts are
    prefilled), then repeatedly `sample` (one token per row) and `advance` (feed the tokens back, which makes
    the next logits ready); `release` a request to free its lanes. Call it under `torch.no_grad()`.

    `vocab_limit` (the tokenizer's vocabulary, when the model pads its own) keeps ids that cannot be decoded
    from ever being sampled. `fixed_shapes` decodes a bucket of lanes (the next power of two of the rows in
    use, or all lanes) over the whole window under a mask, the shapes a CUDA graph or a compiled step needs,
    instead of exactly the lanes and positions in use (on by default where CUDA graphs are or `compile` is;
    on a CPU it makes attention over the whole window every step, 2-4x slower decoding in bf16). Neither makes
    a row's numbers independent of the rows beside it on a CPU: the attention length and the matrix kernels
    (`cpu_linear.py` chooses by the number of rows) round a little differently, about 1e-6 in float32 and the
    last bit in bf16 (docs/precision.md);
    `cuda_graphs` captures that step on CUDA (ignored elsewhere); `compile` runs it through `torch.compile`
    (one compilation per bucket, on first use: the decode step fused into a few kernels). `cache_dtype`
    overrides the KV cache's dtype (default: `cache_dtype()`, float32 on a CPU; benchmarks compare the two).
    """

    def __init__(self, model: nn.Module, lanes: int, *, vocab_limit: int | None = None, cuda_graphs: bool = True,
                 fixed_shapes: bool | None = None, compile: bool = False, cache_dtype: torch.dtype | None = None):
        if lanes < 1:
            raise ValueError(f"a decode core needs at least one lane, got {lanes}")
        self.model = model
        self.device = next(model.parameters()).device
        self.block_size, self.vocab_size = model.block_size, model.vocab_size
        W, V, dev = self.block_size, self.vocab_size, self.device
        self.lanes = lanes
        self.cache = KVCache.for_model(model, lanes, cache_dtype)
        self.tokens = torch.zeros(lanes, 1, dtype=torch.long, device=dev)  # (L, 1) each lane's token to feed
        self.slot = torch.zeros(lanes, dtype=torch.long, device=dev)  # (L,) where that token goes
        self.history = torch.zeros(lanes, W, dtype=torch.long, device=dev)  # (L, W) each lane's window of tokens
        self.logits = torch.zeros(lanes, V, device=dev)  # (L, V) each lane's next-token logits, float32
        self._lane_ids = torch.arange(lanes, device=dev)  # (L,)
        self._key_pos = torch.arange(W, device=dev)  # (W,)
        self._unusable = None
        self.vocab_limit = vocab_limit if vocab_limit is not None and 0 < vocab_limit < V else None
        if self.vocab_limit is not None:
            self._unusable = torch.arange(V, device=dev) >= vocab_limit  # (V,)
        self._admitted: dict[Request, _Admitted] = {}  # in the order they were added
        self._rows: list[_Lane] = []  # row i holds lane i: the active lanes are 0..A-1
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        graphs = cuda_graphs and dev.type == "cuda" and model.cache_shape()[0] > 0
        self.fixed_shapes = (graphs or compile) if fixed_shapes is None else fixed_shapes
        if compile and not self.fixed_shapes:
            raise ValueError("a compiled decode step needs fixed shapes")
        self._run_step = torch.compile(self._step, dynamic=False) if compile else self._step
        self.buckets = sorted({min(2**i, lanes) for i in range(lanes.bit_length() + 1)})
        if graphs and self.fixed_shapes:
            self._capture_graphs()

    @property
    def graphed(self) -> bool:
        """Whether decode steps replay captured CUDA graphs."""
        return bool(self._graphs)

    @property
    def requests(self) -> list[Request]:
        """The requests holding lanes, in the order they were added."""
        return list(self._admitted)

    def holds(self, req: Request) -> bool:
        """Whether `req` holds lanes (added and not yet released)."""
        return req in self._admitted

    @property
    def active(self) -> int:
        """Rows now holding lanes."""
        return len(self._rows)

    @property
    def vocab(self) -> int:
        """Ids a prompt may hold: the model's, or the tokenizer's when the model pads its vocabulary."""
        return self.vocab_limit or self.vocab_size

    def check(self, prompts: list[list[int]], *, longer: bool = False) -> None:
        """`check_prompts` against this core's context and vocabulary (`PromptError` on the first bad one)."""
        check_prompts(prompts, self.block_size, self.vocab, longer=longer)

    # ---- requests in and out --------------------------------------------------------------------------

    def add(self, requests: list[Request]) -> None:
        """Give each request's rows free lanes and prefill its prompts; their next logits are ready after.

        Prompts of equal length are prefilled in one forward, whichever request they belong to; a prompt's
        samples share its prefill (copied to their lanes). A bad prompt raises `PromptError` before anything
        runs.
        """
        W = self.block_size
        if self.active + sum(r.width for r in requests) > self.lanes:
            raise ValueError(f"{sum(r.width for r in requests)} more rows do not fit: "
                             f"{self.active} of {self.lanes} lanes are taken")
        for req in requests:
            self.check(req.prompts)
        for req in requests:
            keep = keep_after_slide(W, req.settings.window)
            lanes = [_Lane(req, self.active + i, len(req.prompts[i // req.n]), keep) for i in range(req.width)]
            gen = req.generator or new_generator(req.settings.seed, self.device)
            self._admitted[req] = _Admitted(lanes, gen, self._lane_ids[:0], [None] * len(req.prompts))
            self._rows.extend(lanes)
            self._index(req)
        todo = [(req, p) for req in requests if req.needs_prefill for p in range(len(req.prompts))]
        for length in sorted({len(req.prompts[p]) for req, p in todo}):
            group = [(req, p) for req, p in todo if len(req.prompts[p]) == length]
            lanes = [self._admitted[req].lanes[p * req.n].lane for req, p in group]
            windows = torch.tensor([req.prompts[p] for req, p in group], dtype=torch.long, device=self.device)
            every = any(req.prompt_logprobs for req, _ in group)  # logits of every position, not just the last
            logits = self._prefill(lanes, windows, last_only=not every)  # (G, T|1, V)
            self.logits[lanes] = logits[:, -1].float()
            if every:
                for g, (req, p) in enumerate(group):
                    if req.prompt_logprobs:
                        scored = self._usable(logits[g, :-1].float())  # (T-1, V) predicts tokens 1..T-1
                        self._admitted[req].prompt_scores[p] = token_logprobs(scored, windows[g, 1:],
                                                                              self._top(req.logprobs))
            siblings = [(rows[p * req.n].lane, r.lane) for req, p in group
                        for rows in (self._admitted[req].lanes,) for r in rows[p * req.n + 1:(p + 1) * req.n]]
            if siblings:
                self._copy_lanes(*map(list, zip(*siblings, strict=True)), upto=length)
        for req in requests:
            rec = self._admitted[req]
            self.slot[rec.lane_index] = torch.tensor([r.ctx for r in rec.lanes], device=self.device)

    def prompt_scores(self, req: Request) -> list[PromptScores | None]:
        """Per prompt of a request added with `prompt_logprobs`: its tokens' scores (None for the others)."""
        return self._admitted[req].prompt_scores

    def _top(self, k: int | None) -> int:
        return min(k or 0, self.vocab)  # alternatives asked for, at most every usable id

    def release(self, req: Request) -> None:
        """Free a request's lanes; rows in the highest lanes move into the holes (one lane copy each)."""
        del self._admitted[req]
        keep = [r for r in self._rows if r.request is not req]
        moves = [(r.lane, new) for new, r in enumerate(keep) if r.lane != new]
        if moves:
            self._copy_lanes([s for s, _ in moves], [d for _, d in moves],
                             upto=max(r.ctx for r in keep if r.lane != keep.index(r)))
        touched = {r.request for r in keep if r.lane != keep.index(r)}
        for new, r in enumerate(keep):
            r.lane = new
        self._rows = keep
        for other in touched:
            self._index(other)

    def _index(self, req: Request) -> None:
        rec = self._admitted[req]
        rec.lane_index = torch.tensor([r.lane for r in rec.lanes], dtype=torch.long, device=self.device)

    def _copy_lanes(self, src: list[int], dst: list[int], upto: int) -> None:
        """Lanes src[i] -> dst[i]: keys and values of slots [0, upto), the window, slot, token and logits."""
        s, d = torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device)
        self.cache.k[:, d, :, :upto] = self.cache.k[:, s, :, :upto]  # gathered first: overlapping moves are fine
        self.cache.v[:, d, :, :upto] = self.cache.v[:, s, :, :upto]
        for t in (self.history, self.slot, self.tokens, self.logits):
            t[d] = t[s]

    # ---- one step ---------------------------------------------------------------------------------------

    def _usable(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., V) with the ids past the tokenizer's vocabulary set to -inf."""
        return logits if self._unusable is None else logits.masked_fill(self._unusable, float("-inf"))

    def sample(self, requests: list[Request] | None = None) -> list[Sampled]:
        """One token for every row of `requests` (default: all), each request drawing from its own generator
        with its own settings; log-probabilities where asked for. Nothing here waits for the device."""
        out = []
        for req in self._admitted if requests is None else requests:
            rec = self._admitted[req]
            logits = self._usable(self.logits[rec.lane_index])  # (rows, V)
            tokens = sample_next(logits, req.settings, rec.generator)  # (rows,)
            sampled = Sampled(req, tokens)
            if req.logprobs is not None:
                sampled.logprobs, sampled.top_values, sampled.top_ids = token_logprobs(logits, tokens,
                                                                                       self._top(req.logprobs))
            out.append(sampled)
        return out

    def advance(self, sampled: list[Sampled]) -> None:
        """Feed every active row the token it sampled; afterwards the next logits of every row are ready.

        One decode forward for all active lanes. A row whose window is full re-prefills its newest `keep`
        tokens instead (rows of equal `keep` in one prefill); its lane computes junk in the decode meanwhile.
        """
        for s in sampled:
            self.tokens[self._admitted[s.request].lane_index, 0] = s.tokens
        A, W = self.active, self.block_size
        if A == 0:
            return
        sliding = [r for r in self._rows if r.ctx == W]  # the new token would make the window W + 1 long
        windows = {}
        for keep in sorted({r.keep for r in sliding}):  # read before the decode step writes the windows
            lanes = [r.lane for r in sliding if r.keep == keep]
            windows[keep] = (lanes, torch.cat((self.history[lanes, W - keep + 1:], self.tokens[lanes]), dim=1))
        if len(sliding) < A:
            self._decode(A, min(max(r.ctx for r in self._rows) + 1, W))
        for keep, (lanes, window) in windows.items():  # window (G, keep)
            self.logits[lanes] = self._prefill(lanes, window)[:, -1].float()
            self.slot[lanes] = keep
        for r in self._rows:
            r.ctx = r.keep if r.ctx == W else r.ctx + 1

    def _prefill(self, lanes: list[int], windows: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Run windows (G, T) into `lanes` from slot 0; return the logits (G, T or 1, V)."""
        T = windows.size(1)
        view = _PrefillView(self.cache, torch.tensor(lanes, device=self.device))
        logits, _ = self.model(windows, cache=view, positions=self._key_pos[:T], last_only=last_only)
        self.history[lanes, :T] = windows
        return logits

    def _decode(self, A: int, view_len: int) -> None:
        """The decode forward for lanes 0..A-1: with fixed shapes over the smallest bucket that holds them
        (its captured graph where there is one; the lanes past A compute junk nobody reads), else eagerly
        over just the lanes and positions in use."""
        if not self.fixed_shapes:
            self.logits[:A] = self._step(A, view_len)
            return
        b = next(b for b in self.buckets if b >= A)
        if b in self._graphs:
            graph, out = self._graphs[b]
            graph.replay()
        else:
            out = self._run_step(b, self.block_size)
        self.logits[:A] = out[:A]

    def _step(self, b: int, view_len: int) -> torch.Tensor:
        """Lanes 0..b-1 feed their token at their slot and advance it; returns their next logits (b, V)."""
        lanes, W = self._lane_ids[:b], self.block_size
        slot = self.slot[:b].clamp(max=W - 1)  # a row about to slide computes junk, then re-prefills
        self.history[lanes, slot] = self.tokens[:b, 0]
        mask = (self._key_pos[:view_len][None, :] <= slot[:, None])[:, None, None, :]  # (b, 1, 1, S)
        view = _DecodeView(self.cache, lanes, slot, view_len)
        logits, _ = self.model(self.tokens[:b], cache=view, attn_mask=mask, positions=slot[:, None], last_only=True)
        self.slot[:b] += 1  # in place, so a replayed graph advances by itself
        return logits[:, -1, :].float()

    def _capture_graphs(self) -> None:
        """One CUDA graph per bucket (powers of two up to the lane count, and the lane count), captured now
        while the lanes are empty; the graphs share one memory pool (they never run at once)."""
        pool = torch.cuda.graph_pool_handle()
        try:
            for b in self.buckets:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up (cuBLAS handles, allocator) off the capture stream
                    for _ in range(2):
                        self._run_step(b, self.block_size)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self._run_step(b, self.block_size)
                self._graphs[b] = (graph, out)
        except RuntimeError as e:  # an op that cannot be captured on this build: decode eagerly instead
            self._graphs.clear()
            echo(f"note: CUDA graph capture failed ({str(e).splitlines()[0]}); decoding without a graph")
        self.slot.zero_()
        self.history.zero_()


# ---- the uncached reference ---------------------------------------------------------------------------------

def reference_steps(model: nn.Module, prompts: list[list[int]], ns: int, s: SamplingSettings,
                    gen: torch.Generator, vocab_limit: int | None = None) -> Iterator[torch.Tensor]:
    """Every step runs the model on each row's whole window (the same sliding policy); yields (B, 1) tokens."""
    W, keep, dev = model.block_size, keep_after_slide(model.block_size, s.window), next(model.parameters()).device
    V = model.vocab_size
    unusable = torch.arange(V, device=dev) >= vocab_limit if vocab_limit is not None and 0 < vocab_limit < V else None
    seqs = [list(prompts[r // ns]) for r in range(len(prompts) * ns)]
    starts = [0] * len(seqs)  # where each row's window begins in its sequence
    for _ in range(s.max_new_tokens):
        rows = []
        for r, seq in enumerate(seqs):
            if len(seq) - starts[r] > W:
                starts[r] = len(seq) - keep
            window = torch.tensor([seq[starts[r]:]], dtype=torch.long, device=dev)  # (1, T)
            logits, _ = model(window, last_only=True)
            rows.append(logits[0, -1, :].float())
        logits = torch.stack(rows)  # (B, V)
        if unusable is not None:
            logits = logits.masked_fill(unusable, float("-inf"))
        nxt = sample_next(logits, s, gen)  # (B,)
        for seq, tok in zip(seqs, nxt.tolist(), strict=True):
            seq.append(tok)
        yield nxt[:, None].cpu()


# ---- the engine: one batch, text or tokens ------------------------------------------------------------------

class Engine:
    """Generates from a model and tokenizer through the decode core. Reuse one engine: cores (caches and
    CUDA graphs) are kept per batch size."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer | None = None, *, cuda_graphs: bool = True, sync_every: int | None = None,
                 fixed_shapes: bool | None = None, compile: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.block_size, self.vocab_size = model.block_size, model.vocab_size
        # a model may pad its vocabulary past the tokenizer's (model.vocab_size above the data's): ids the
        # tokenizer cannot decode are never sampled
        n_tok = tokenizer.vocab_size if tokenizer is not None else None  # token-level use needs no tokenizer
        self.vocab_limit = n_tok if n_tok is not None and 0 < n_tok < self.vocab_size else None
        self.cuda_graphs, self.fixed_shapes, self.compile = cuda_graphs, fixed_shapes, compile
        self.sync_every = sync_every or (16 if self.device.type == "cuda" else 1)
        self._cores: dict[int, DecodeCore] = {}
        self._said_truncated = False

    # ---- token level ------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids; an empty prompt starts from <|endoftext|> if the tokenizer has one, else a newline."""
        if self.tokenizer is None:
            raise UserError("this engine has no tokenizer; pass token ids instead of text")
        return encode_prompt(self.tokenizer, prompt)

    def stop_ids(self, settings: SamplingSettings) -> frozenset[int]:
        return stop_token_ids(self.tokenizer, settings)

    def _window(self, ids: list[int]) -> list[int]:
        if len(ids) > self.block_size:
            if not self._said_truncated:
                echo(f"note: a prompt of {len(ids):,} tokens is longer than the context of {self.block_size}; "
                     f"keeping its last {self.block_size} tokens")
                self._said_truncated = True
            return ids[-self.block_size:]
        return ids

    def token_steps(self, prompts: list[list[int]], settings: SamplingSettings, num_samples: int = 1,
                    use_cache: bool = True) -> Iterator[torch.Tensor]:
        """Yield the new tokens as CPU tensors (B, k), k >= 1 steps at a time; rows are prompt-major
        (all samples of prompt 0, then prompt 1, ...). Runs `max_new_tokens` steps, or until every row has
        ended at a stop id (the end-of-text rule), unless closed early. Bad input raises here, before the
        first step."""
        return self._chunks(self._start(prompts, settings, num_samples, use_cache, text=False))

    def _start(self, prompts: list[list[int]], settings: SamplingSettings, num_samples: int, use_cache: bool,
               text: bool) -> Iterator[tuple[torch.Tensor | None, list[Event]]]:
        """Check the prompts (the core's one check; longer ones keep their last block), start the steps and
        drive them through the request's `Completion`: yields (new tokens (B, k), the events they made), and
        (None, the last events) when the steps run out."""
        if not prompts:
            raise UserError("every prompt needs at least one token")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= 4096:
            raise UserError(f"number of samples must be from 1 to 4096, got {num_samples!r}")
        if text and self.tokenizer is None:
            raise UserError("this engine has no tokenizer; use generate_ids for token ids")
        check_prompts(prompts, self.block_size, self.vocab_limit or self.vocab_size, longer=True)
        prompts = [self._window(list(p)) for p in prompts]
        gen = new_generator(settings.seed, self.device)
        if use_cache:
            steps = self._run(prompts, num_samples, settings, gen)
        else:
            steps = reference_steps(self.model, prompts, num_samples, settings, gen, self.vocab_limit)
        completion = Completion(prompts, num_samples, settings, self.tokenizer, text=text)
        return self._drive(self._guarded(steps), completion)

    @staticmethod
    def _drive(steps: Iterator[torch.Tensor],
               completion: Completion) -> Iterator[tuple[torch.Tensor | None, list[Event]]]:
        """Each chunk of steps through the completion, column by column; stops once every row has ended."""
        try:
            for chunk in steps:
                yield chunk, [ev for column in chunk.T.tolist() for ev in completion.step(column)]
                if completion.done:
                    return
            yield None, completion.close()
        finally:
            steps.close()

    @staticmethod
    def _chunks(drive: Iterator[tuple[torch.Tensor | None, list[Event]]]) -> Iterator[torch.Tensor]:
        try:
            for chunk, _ in drive:
                if chunk is not None:
                    yield chunk
        finally:
            drive.close()

    @staticmethod
    def _pieces(drive: Iterator[tuple[torch.Tensor | None, list[Event]]]) -> Iterator[tuple[int, str]]:
        try:
            for _, events in drive:
                for ev in events:
                    if isinstance(ev, TextPiece) and ev.text:
                        yield ev.row, ev.text
        finally:
            drive.close()

    def _run(self, prompts: list[list[int]], ns: int, s: SamplingSettings,
             gen: torch.Generator) -> Iterator[torch.Tensor]:
        B, n = len(prompts) * ns, s.max_new_tokens
        if n == 0:
            return
        core = self.core(B)
        req = Request(prompts, ns, s, generator=gen)
        try:
            core.add([req])  # inside: an interrupt during the prefill still frees the lanes
            out = torch.empty(B, n, dtype=torch.long, device=self.device)  # (B, n) the new tokens
            last = 0
            for t in range(n):
                (sampled,) = core.sample()
                out[:, t] = sampled.tokens
                if t + 1 - last >= self.sync_every or t == n - 1:
                    yield out[:, last : t + 1].cpu()
                    last = t + 1
                if t < n - 1:
                    core.advance([sampled])
        finally:
            if core.holds(req):  # add may have stopped before it took the lanes
                core.release(req)

    def core(self, lanes: int) -> DecodeCore:
        """The decode core for batches of `lanes` rows (kept, with its cache and graphs, for the next call)."""
        if lanes not in self._cores:
            if len(self._cores) >= 4:  # bound memory: drop the oldest batch size's cache and graphs
                self._cores.pop(next(iter(self._cores)))
            self._cores[lanes] = DecodeCore(self.model, lanes, vocab_limit=self.vocab_limit,
                                            cuda_graphs=self.cuda_graphs, fixed_shapes=self.fixed_shapes,
                                            compile=self.compile)
        return self._cores[lanes]

    def _guarded(self, steps: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Run each step in eval mode without autograd; grad mode is not left off between steps."""
        was_training = self.model.training
        self.model.eval()
        try:
            while True:
                with torch.no_grad():
                    chunk = next(steps, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            steps.close()
            self.model.train(was_training)

    def generate_ids(self, prompts: list[list[int]], settings: SamplingSettings | None = None,
                     num_samples: int = 1, use_cache: bool = True, **kwargs) -> list[list[int]]:
        """All new token ids per row, each ending before its first stop id (the end-of-text rule; stop
        strings act on text, so not here)."""
        s = settings_from(settings, **kwargs)
        chunks = list(self.token_steps(prompts, s, num_samples, use_cache))
        if not chunks:
            return [[] for _ in range(len(prompts) * num_samples)]
        stop = self.stop_ids(s)
        rows = torch.cat(chunks, dim=1).tolist()
        return [next((row[:i] for i, tok in enumerate(row) if tok in stop), row) for row in rows]

    # ---- text level -------------------------------------------------------------------------------

    def stream_rows(self, prompts: list[str] | list[list[int]], settings: SamplingSettings | None = None,
                    num_samples: int = 1, use_cache: bool = True, **kwargs) -> Iterator[tuple[int, str]]:
        """Yield (row, text piece) as text becomes final; rows are prompt-major. Prompts are texts or token
        ids. A row ends at a stop string or a stop id (the end-of-text rule). Bad input (settings, unknown
        characters) raises here, before anything is yielded."""
        s = settings_from(settings, **kwargs)
        ids = [list(p) if isinstance(p, list) else self.encode(p) for p in prompts]
        return self._pieces(self._start(ids, s, num_samples, use_cache, text=True))

    def chat(self, messages: list, settings: SamplingSettings | None = None, num_samples: int = 1,
             **kwargs) -> str | list[str]:
        """The assistant's reply to a conversation (OpenAI-style messages) through the run's chat template:
        a string, or a list for several samples. It ends at <|assistant_end|>. A conversation too long for the
        context loses its oldest turns first (`fit_chat`)."""
        texts = [""] * num_samples
        for r, piece in self.stream_chat_rows(messages, settings, num_samples, **kwargs):
            texts[r] += piece
        return texts[0] if num_samples == 1 else texts

    def fit_chat(self, messages: list, settings: SamplingSettings) -> chat.Fitted:
        """The conversation's prompt within the context, its oldest whole turns dropped when it does not fit
        with room for the reply (`chat.fit_conversation`, as the server does); the system message stays."""
        msgs = messages if messages and isinstance(messages[0], chat.Message) else chat.parse_messages(messages)
        if self.tokenizer is None:
            raise UserError("this engine has no tokenizer, so no chat template")
        room = chat.reply_room(settings.max_new_tokens, self.block_size)
        return chat.fit_conversation(self.tokenizer, msgs, self.block_size, room)

    def stream_chat_rows(self, messages: list, settings: SamplingSettings | None = None, num_samples: int = 1,
                         **kwargs) -> Iterator[tuple[int, str]]:
        """Yield (sample, text piece) of the assistant's reply as it comes."""
        s = settings_from(settings, **kwargs)
        return self.stream_fitted(self.fit_chat(messages, s), s, num_samples)

    def stream_fitted(self, fitted: chat.Fitted, settings: SamplingSettings,
                      num_samples: int = 1) -> Iterator[tuple[int, str]]:
        """Yield (sample, text piece) of the assistant's reply to a conversation already fitted (`fit_chat`
        with these settings). Bad input raises here, before anything is yielded."""
        stop = set(settings.stop_token_ids) | chat.stop_ids(self.tokenizer)
        s = settings.replace(stop_token_ids=tuple(sorted(stop)))
        return self.stream_rows([fitted.ids], s, num_samples)

    def stream(self, prompt: str = "", settings: SamplingSettings | None = None, **kwargs) -> Iterator[str]:
        """Yield the continuation of one prompt piece by piece (the prompt itself is not repeated)."""
        return (piece for _, piece in self.stream_rows([prompt], settings, **kwargs))

    def generate(self, prompt: str | list[str] = "", settings: SamplingSettings | None = None,
                 num_samples: int = 1, **kwargs) -> str | list[str]:
        """The whole continuation: a string for one prompt and one sample, else a list (prompt-major)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [""] * (len(prompts) * num_samples)
        for r, piece in self.stream_rows(prompts, settings, num_samples, **kwargs):
            texts[r] += piece
        return texts[0] if isinstance(prompt, str) and num_samples == 1 else texts


def stream(model: nn.Module, tokenizer, prompt: str = "", max_new_tokens: int = 500, temperature: float = 1.0,
           top_k: int | None = None, seed: int | None = None, **kwargs) -> Iterator[str]:
    """One-off streaming (builds an engine; keep an `Engine` to reuse caches and CUDA graphs)."""
    s = settings_from(None, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, **kwargs)
    return Engine(model, tokenizer).stream(prompt, s)


def generate(model: nn.Module, tokenizer, prompt: str = "", **kwargs) -> str:
    """The whole continuation as one string."""
    return "".join(stream(model, tokenizer, prompt, **kwargs))

"""The generation engine: prefill once, then decode token by token against a preallocated KV cache.

Owns `KVCache` (keys and values of every layer, preallocated), `Engine` (batches of prompts of different
lengths, several samples per prompt sharing one prefill, CUDA-graph decode, streaming text) and the
uncached reference path the tests and benchmarks compare it to. Sampling policy and text assembly live in
`sampling.py`; the model (`models/gpt.py`) takes the cache as an argument and stays pure. Does not own
tokenization rules beyond calling the tokenizer.

Rows. Every row (one sample of one prompt) owns one lane of the cache; its context starts at slot 0 and
its token at slot j has position j, exactly as if it were generated alone. Prompts of different lengths
are prefilled in groups of equal length; the decode step writes each row's new key at its own slot and
masks keys past it, so a batch gives each row what generating it alone gives.

Sliding policy (one policy, used by the cached engine and by the uncached reference alike). The context
is a window of the token sequence of at most W = block_size tokens; positions count from the window's
start. A prompt longer than W keeps its last W tokens (said once). When the next token would make the
window W + 1 long, the window moves forward and the engine re-prefills it into the row's lane, which also
gives the next logits. How far it moves is the `window` setting:
- "full" (default): the window becomes the last W tokens, every token: exactly what the lecture's
  crop-to-the-last-block computes. With learned absolute positions every position shifts at each step, so
  past the block each token costs one full-window prefill (the cache speeds up everything before that).
- "half": the window becomes the last ceil(W / 2) tokens (the oldest half is dropped), so past the block
  the cost is one half-window prefill per W / 2 tokens: 5-10x faster for long generations, with a context
  that shrinks to half a block at each jump.
The reference runs the model on exactly the same window at every step, so the two agree token for token.

CUDA. The decode step (fixed batch, whole-capacity attention with a mask, positions and slots read from
device tensors that the step itself advances) is captured once per batch size as a CUDA graph and replayed
once per token. Sampling runs eagerly on the device without host syncs; token ids come back to the host
every `sync_every` tokens (16 on CUDA, 1 elsewhere), where stop strings are checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn as nn

from .console import echo
from .errors import UserError
from .models.gpt import GPT
from .sampling import MAX_NEW_TOKENS_CAP, SamplingSettings, TextStream, sample_next, settings_from

__all__ = ["Engine", "KVCache", "MAX_NEW_TOKENS_CAP", "SamplingSettings", "generate", "keep_after_slide",
           "stream"]


def keep_after_slide(block_size: int, window: str = "half") -> int:
    """Tokens the window keeps when it slides: all W ("full": the last block) or the newest ceil(W / 2)."""
    return block_size if window == "full" else block_size - block_size // 2


class KVCache:
    """Keys and values for every layer, preallocated: each (n_layer, B, n_head, capacity, head_dim)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(n_layer, batch, n_head, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.batch, self.capacity = batch, capacity

    @classmethod
    def for_model(cls, model: GPT, batch: int) -> KVCache:
        c = model.config
        p = next(model.parameters())
        return cls(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head, p.dtype, p.device)

    def prefill_view(self, rows: torch.Tensor) -> _PrefillView:
        return _PrefillView(self, rows)

    def decode_view(self, slots: torch.Tensor, view_len: int) -> _DecodeView:
        return _DecodeView(self, slots, view_len)


class _PrefillView:
    """The model's cache argument during a prefill: the T new keys of `rows` go to slots 0..T-1."""

    pos = 0

    def __init__(self, cache: KVCache, rows: torch.Tensor):
        self.cache, self.rows = cache, rows  # rows (G,)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)  # k, v (G, nh, T, hs)
        self.cache.k[layer][self.rows, :, :T] = k
        self.cache.v[layer][self.rows, :, :T] = v
        return k, v  # the window starts here: nothing older to attend to


class _DecodeView:
    """The model's cache argument during a decode step: one new key per row, at that row's own slot."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, view_len: int):
        self.cache, self.slots, self.view_len = cache, slots, view_len  # slots (B,)
        self.rows = torch.arange(cache.batch, device=slots.device)

    @property
    def pos(self) -> int:
        return self.view_len - 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl, vl = self.cache.k[layer], self.cache.v[layer]  # (B, nh, cap, hs)
        kl[self.rows, :, self.slots] = k[:, :, 0]  # k (B, nh, 1, hs): row b's key to slot slots[b]
        vl[self.rows, :, self.slots] = v[:, :, 0]
        return kl[:, :, : self.view_len], vl[:, :, : self.view_len]  # (B, nh, S, hs); the mask hides the rest


class _Decoder:
    """The decode step for one batch size: cache, static inputs, and on CUDA the captured graph."""

    def __init__(self, model: GPT, batch: int, graphs: bool):
        self.model = model
        self.cache = KVCache.for_model(model, batch)
        dev = self.cache.k.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # (B, 1) the token to feed
        self.slot = torch.zeros(batch, dtype=torch.long, device=dev)  # (B,) where that token goes
        self.key_pos = torch.arange(self.cache.capacity, device=dev)  # (cap,)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        if graphs:
            try:
                self._capture()
            except RuntimeError as e:  # an op that cannot be captured on this build: decode eagerly instead
                self.graph = None
                echo(f"note: CUDA graph capture failed ({str(e).splitlines()[0]}); decoding without a graph")

    def _forward(self, view_len: int) -> torch.Tensor:
        slot = self.slot.clamp(max=self.cache.capacity - 1)  # a row about to slide computes junk, then re-prefills
        mask = (self.key_pos[:view_len][None, :] <= slot[:, None])[:, None, None, :]  # (B, 1, 1, S)
        view = self.cache.decode_view(slot, view_len)
        logits, _ = self.model(self.tokens, cache=view, attn_mask=mask, positions=slot[:, None], last_only=True)
        self.slot += 1  # in place, so a replayed graph advances by itself
        return logits[:, -1, :]  # (B, V)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (cuBLAS handles, allocator) off the capture stream
            for _ in range(2):
                self._forward(self.cache.capacity)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._forward(self.cache.capacity)

    def step(self, tokens: torch.Tensor, view_len: int) -> torch.Tensor:
        """Feed tokens (B,) at the current slots; return the next logits (B, V) (a fresh tensor)."""
        self.tokens.copy_(tokens[:, None])
        if self.graph is not None:
            self.graph.replay()
            return self.out.clone()
        return self._forward(view_len)


class Engine:
    """Generates from a model and tokenizer. Reuse one engine: caches and CUDA graphs are kept per batch size.

    `cuda_graphs` captures the decode step on CUDA (ignored elsewhere). Models without a KV cache path
    (the bigram) use the uncached path, which costs them nothing since they look at one token.
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, cuda_graphs: bool = True, sync_every: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size if hasattr(model, "config") else model.block_size
        self.cached = isinstance(model, GPT)
        emb = model.lm_head if self.cached else model.token_embedding_table
        self.vocab_size = emb.out_features if self.cached else emb.num_embeddings
        # a model may pad its vocabulary past the tokenizer's (model.vocab_size above the data's): ids the
        # tokenizer cannot decode are never sampled
        n_tok = getattr(tokenizer, "vocab_size", None)
        self._unusable = None
        if isinstance(n_tok, int) and 0 < n_tok < self.vocab_size:
            self._unusable = torch.arange(self.vocab_size, device=self.device) >= n_tok  # (V,)
        self.graphs = cuda_graphs and self.device.type == "cuda" and self.cached
        self.sync_every = sync_every or (16 if self.device.type == "cuda" else 1)
        self._full_view = self.graphs  # attend over the whole capacity under a mask, as the graph does
        self._decoders: dict[int, _Decoder] = {}
        self._said_truncated = False

    # ---- token level ------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids; an empty prompt starts from <|endoftext|> if the tokenizer has one, else a newline."""
        if self.tokenizer is None:
            raise UserError("this engine has no tokenizer; pass token ids instead of text")
        if prompt == "":
            eot = getattr(self.tokenizer, "eot_token", None)
            if isinstance(eot, int):
                return [eot]
            try:
                ids = self.tokenizer.encode("\n")
            except UserError:
                ids = []
            return ids or [0]
        return self.tokenizer.encode(prompt)

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
        (all samples of prompt 0, then prompt 1, ...). Runs `max_new_tokens` steps unless closed early.
        Bad input raises here, before the first step."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= 4096:
            raise UserError(f"number of samples must be from 1 to 4096, got {num_samples!r}")
        V = self.vocab_size
        for p in prompts:
            if min(p) < 0 or max(p) >= V:
                raise UserError(f"prompt token ids must be in [0, {V}), got {min(p)}..{max(p)}")
        prompts = [self._window(list(p)) for p in prompts]
        seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(6), "little")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        run = self._run_cached if use_cache and self.cached else self._run_uncached
        return self._guarded(run(prompts, num_samples, settings, gen))

    def _usable(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) with the ids past the tokenizer's vocabulary set to -inf."""
        return logits if self._unusable is None else logits.masked_fill(self._unusable, float("-inf"))

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
        """All new token ids per row (no stop strings: those act on text)."""
        s = settings_from(settings, **kwargs)
        chunks = list(self.token_steps(prompts, s, num_samples, use_cache))
        if not chunks:
            return [[] for _ in range(len(prompts) * num_samples)]
        return torch.cat(chunks, dim=1).tolist()

    def _prefill(self, dec: _Decoder, rows: list[int], windows: torch.Tensor) -> torch.Tensor:
        """Run windows (G, T) into the cache lanes `rows` from slot 0; return the next logits (G, V)."""
        T = windows.size(1)
        view = dec.cache.prefill_view(torch.tensor(rows, device=self.device))
        logits, _ = self.model(windows, cache=view, positions=torch.arange(T, device=self.device), last_only=True)
        return logits[:, -1, :].float()

    def _decoder(self, batch: int) -> _Decoder:
        if batch not in self._decoders:
            if len(self._decoders) >= 4:  # bound memory: drop the oldest batch size's cache and graph
                self._decoders.pop(next(iter(self._decoders)))
            self._decoders[batch] = _Decoder(self.model, batch, self.graphs)
        return self._decoders[batch]

    def _run_cached(self, prompts: list[list[int]], ns: int, s: SamplingSettings,
                    gen: torch.Generator) -> Iterator[torch.Tensor]:
        W, keep, dev = self.block_size, keep_after_slide(self.block_size, s.window), self.device
        B, n = len(prompts) * ns, s.max_new_tokens
        if n == 0:
            return
        dec = self._decoder(B)
        prompt_t = [torch.tensor(p, dtype=torch.long, device=dev) for p in prompts]
        logits = torch.empty(len(prompts), self.vocab_size, device=dev)  # (P, V)
        for length in sorted({len(p) for p in prompts}):  # one prefill per distinct prompt, by length
            group = [i for i, p in enumerate(prompts) if len(p) == length]
            logits[group] = self._prefill(dec, [i * ns for i in group], torch.stack([prompt_t[i] for i in group]))
        if ns > 1:  # the samples of a prompt share its prefill: copy lane i * ns to its siblings
            src = torch.arange(B, device=dev) // ns * ns
            dec.cache.k.copy_(dec.cache.k[:, src])
            dec.cache.v.copy_(dec.cache.v[:, src])
            logits = logits.repeat_interleave(ns, dim=0)  # (B, V)
        ctx = [len(prompts[r // ns]) for r in range(B)]  # tokens in each lane (host mirror of dec.slot)
        dec.slot.copy_(torch.tensor(ctx))
        out = torch.empty(B, n, dtype=torch.long, device=dev)  # (B, n) the new tokens
        last = 0
        for t in range(n):
            nxt = sample_next(self._usable(logits), s, gen)  # (B,)
            out[:, t] = nxt
            if t + 1 - last >= self.sync_every or t == n - 1:
                yield out[:, last : t + 1].cpu()
                last = t + 1
            if t == n - 1:
                break
            slide = [r for r in range(B) if ctx[r] == W]  # the new token would make the window W + 1 long
            if len(slide) < B:
                logits = dec.step(nxt, W if self._full_view else min(max(ctx) + 1, W)).float()
            if slide:
                windows = torch.stack([torch.cat((prompt_t[r // ns], out[r, : t + 1]))[-keep:] for r in slide])
                logits[slide] = self._prefill(dec, slide, windows)
                dec.slot[slide] = keep
            ctx = [keep if c == W else c + 1 for c in ctx]

    def _run_uncached(self, prompts: list[list[int]], ns: int, s: SamplingSettings,
                      gen: torch.Generator) -> Iterator[torch.Tensor]:
        """The reference: every step runs the model on each row's whole window (same sliding policy)."""
        W, keep = self.block_size, keep_after_slide(self.block_size, s.window)
        seqs = [list(prompts[r // ns]) for r in range(len(prompts) * ns)]
        starts = [0] * len(seqs)  # where each row's window begins in its sequence
        for _ in range(s.max_new_tokens):
            rows = []
            for r, seq in enumerate(seqs):
                if len(seq) - starts[r] > W:
                    starts[r] = len(seq) - keep
                window = torch.tensor([seq[starts[r]:]], dtype=torch.long, device=self.device)  # (1, T)
                logits, _ = self.model(window, last_only=True)
                rows.append(logits[0, -1, :].float())
            nxt = sample_next(self._usable(torch.stack(rows)), s, gen)  # (B,)
            for seq, tok in zip(seqs, nxt.tolist(), strict=True):
                seq.append(tok)
            yield nxt[:, None].cpu()

    # ---- text level -------------------------------------------------------------------------------

    def stream_rows(self, prompts: list[str], settings: SamplingSettings | None = None, num_samples: int = 1,
                    use_cache: bool = True, **kwargs) -> Iterator[tuple[int, str]]:
        """Yield (row, text piece) as text becomes final; rows are prompt-major. Stops at a stop string.
        Bad input (settings, unknown characters) raises here, before anything is yielded."""
        s = settings_from(settings, **kwargs)
        ids = [self.encode(p) for p in prompts]
        steps = self.token_steps(ids, s, num_samples, use_cache)
        streams = [TextStream(self.tokenizer, s.stop, ids[r // num_samples]) for r in range(len(ids) * num_samples)]
        return self._texts(steps, streams)

    @staticmethod
    def _texts(steps: Iterator[torch.Tensor], streams: list[TextStream]) -> Iterator[tuple[int, str]]:
        try:
            for chunk in steps:
                for r, row in enumerate(chunk.tolist()):
                    for tok in row:
                        piece = streams[r].push(tok)
                        if piece:
                            yield r, piece
                if all(st.done for st in streams):
                    return
            for r, st in enumerate(streams):
                piece = st.finish()
                if piece:
                    yield r, piece
        finally:
            steps.close()

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

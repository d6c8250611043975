"""Continuous batching: one worker thread owns the model and decodes every active request in one batch.

Owns `Scheduler` (the queue, the worker thread, the cache lanes) and `Job` (one request: its prompts, n
samples each, sampling settings, its own random generator, and where its events go). Does not own HTTP,
request validation or response formats (`app.py`, `schemas.py`), nor the sampling policy, the KV cache's
storage or the text assembly, which come from the generation engine (`generate.py`, `sampling.py`).

Lanes. The KV cache holds `max_batch` lanes. A job takes one lane per row (rows are prompt-major, as in
`Engine`) and keeps them until it ends. Active lanes are kept as the prefix 0..A-1 of the cache: when a job
leaves, the rows in the highest lanes move into the holes (one lane copy each), so a decode step attends
over a slice of the cache, never a gathered copy.

A step. Cancelled jobs leave; waiting jobs join while lanes are free (first come, first served), each
prefilled into its lanes (one prefill per prompt, copied to its samples' lanes); every job samples one token
per row from its logits, with its own generator (so a seed gives the same text whatever else is running,
and the same text as `Engine` with that seed); finished jobs leave; then one batched forward over all the
remaining lanes gives the next logits. The sliding-window policy is the engine's, per job (its `window`
setting): a row whose window is full re-prefills its last block ("full") or its newest half ("half"), rows
of equal window length in one prefill. Models without a cache path (the bigram) run each row's window instead.

Events reach the job's asyncio queue through `loop.call_soon_threadsafe`: ("text", row, piece),
("finish", row, reason) once per row, ("end", usage) last, or ("error", message).
"""

from __future__ import annotations

import itertools
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..generate import KVCache, keep_after_slide
from ..models.gpt import GPT
from ..sampling import SamplingSettings, TextStream, sample_next

Emit = Callable[[tuple], None]


@dataclass
class _Row:
    job: Job
    index: int  # row number within its job (prompt-major)
    seq: list[int]  # the prompt's window and every token since: what re-prefills read
    stream: TextStream
    lane: int = -1
    ctx: int = 0  # tokens now in the lane
    start: int = 0  # where the window begins in seq (the uncached path)
    keep: int = 0  # tokens the window keeps when it slides (the job's `window` setting)
    tokens: int = 0  # completion tokens counted until the row finished
    done: bool = False


@dataclass
class Job:
    """One request: `prompts` (token ids, each already windowed), `n` samples of each."""

    prompts: list[list[int]]
    n: int
    settings: SamplingSettings
    emit: Emit
    id: int = 0
    rows: list[_Row] = field(default_factory=list)
    cancelled: bool = False
    generator: torch.Generator | None = None
    logits: torch.Tensor | None = None  # (rows, V) the next token's logits
    steps: int = 0

    def cancel(self) -> None:
        """Ask the worker to drop this job at its next step (its lanes are freed then)."""
        self.cancelled = True

    @property
    def width(self) -> int:
        return len(self.prompts) * self.n


class Scheduler:
    """Serves jobs from one background thread; `submit` is safe from any thread."""

    def __init__(self, model: nn.Module, tokenizer, max_batch: int = 32, max_waiting: int = 256):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.cached = isinstance(model, GPT)
        if self.cached:
            self.block_size = model.config.block_size
            self.vocab_size = model.lm_head.out_features
            self.cache = KVCache.for_model(model, max_batch)
            self.key_pos = torch.arange(self.block_size, device=self.device)  # (W,)
        else:
            self.block_size = model.block_size
            self.vocab_size = model.token_embedding_table.num_embeddings
        # a model may pad its vocabulary past the tokenizer's: ids it cannot decode are never sampled (as in Engine)
        n_tok = getattr(tokenizer, "vocab_size", None)
        self._unusable = None
        if isinstance(n_tok, int) and 0 < n_tok < self.vocab_size:
            self._unusable = torch.arange(self.vocab_size, device=self.device) >= n_tok  # (V,)
        self.eot = getattr(tokenizer, "eot_token", None)
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._lanes: list[_Row] = []  # lane i holds self._lanes[i]
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self._paused = False
        self._thread: threading.Thread | None = None
        # counters the tests and /health read
        self.peak_jobs = 0  # most jobs ever decoded in one step
        self.peak_rows = 0
        self.steps = 0
        self.tokens_out = 0
        self.jobs_done = 0

    # ---- control ------------------------------------------------------------------------------------

    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scratchgpt-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def pause(self) -> None:
        """Hold the worker between steps (tests use it to line requests up)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompts: list[list[int]], n: int, settings: SamplingSettings, emit: Emit) -> Job | None:
        """Queue a job; None when the waiting queue is full (the caller answers 503)."""
        if not 1 <= len(prompts) * n <= self.max_batch:
            raise ValueError(f"a job needs 1 to {self.max_batch} rows, got {len(prompts) * n}")
        job = Job([self._window(p) for p in prompts], n, settings, emit)
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                return None
            job.id = next(self._ids)
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def stats(self) -> dict:
        with self._cond:
            waiting = len(self._waiting)
        return {"active_requests": len(self._active), "active_rows": len(self._lanes), "waiting_requests": waiting,
                "max_batch": self.max_batch, "peak_batch_requests": self.peak_jobs, "peak_batch_rows": self.peak_rows,
                "steps": self.steps, "tokens_generated": self.tokens_out, "requests_done": self.jobs_done}

    def _window(self, ids: list[int]) -> list[int]:
        return list(ids[-self.block_size:])  # a longer prompt keeps its last W tokens, as the engine does

    # ---- the worker ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    while not self._stop and (self._paused or (not self._waiting and not self._active)):
                        self._cond.wait()
                    if self._stop:
                        break
                try:
                    self._step()
                except Exception as e:  # a bug: the jobs in flight hear of it, the server keeps serving
                    traceback.print_exc()
                    self._fail(self._active, f"generation failed: {type(e).__name__}: {e}")
                    self._active, self._lanes = [], []
        with self._cond:
            jobs = self._active + list(self._waiting)
            self._waiting.clear()
        self._fail(jobs, "the server is shutting down")
        self._active, self._lanes = [], []

    @staticmethod
    def _fail(jobs: list[Job], message: str) -> None:
        for job in jobs:
            if not job.cancelled:
                job.emit(("error", message))

    def _step(self) -> None:
        for job in [j for j in self._active if j.cancelled]:
            self._leave(job)
        self._admit()
        if not self._active:
            return
        self.peak_jobs = max(self.peak_jobs, len(self._active))
        self.peak_rows = max(self.peak_rows, len(self._lanes))
        for job in self._active:
            self._sample(job)
        for job in [j for j in self._active if j.cancelled or all(r.done for r in j.rows)]:
            self._leave(job)
        if self._lanes:
            self._decode()
        self.steps += 1

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and (self._waiting[0].cancelled
                                     or self._waiting[0].width <= self.max_batch - len(self._lanes)):
                job = self._waiting.popleft()
                if job.cancelled:
                    continue
                self._start(job)

    def _start(self, job: Job) -> None:
        seed = job.settings.seed if job.settings.seed is not None else int.from_bytes(os.urandom(6), "little")
        job.generator = torch.Generator(device=self.device)
        job.generator.manual_seed(seed)
        for prompt in job.prompts:
            for _ in range(job.n):
                row = _Row(job, len(job.rows), list(prompt), TextStream(self.tokenizer, job.settings.stop, prompt))
                row.lane, row.ctx = len(self._lanes), len(prompt)
                row.keep = keep_after_slide(self.block_size, job.settings.window)
                self._lanes.append(row)
                job.rows.append(row)
        self._active.append(job)
        if job.settings.max_new_tokens == 0:
            return  # nothing to compute: it finishes at its first sampling
        logits = torch.empty(len(job.prompts), self.vocab_size, device=self.device)  # (P, V)
        for p, prompt in enumerate(job.prompts):  # one prefill per prompt, copied to its samples' lanes
            first = job.rows[p * job.n]
            logits[p] = self._prefill([first.lane], torch.tensor([prompt], device=self.device))[0]
            for sib in job.rows[p * job.n + 1:(p + 1) * job.n]:
                self._copy_lane(first.lane, sib.lane)
        job.logits = logits.repeat_interleave(job.n, dim=0)  # (rows, V)

    def _sample(self, job: Job) -> None:
        s = job.settings
        if job.cancelled:
            return  # it leaves right after this step's sampling
        if s.max_new_tokens == 0:
            for row in job.rows:
                self._finish(row, "length")
            return
        logits = job.logits if self._unusable is None else job.logits.masked_fill(self._unusable, float("-inf"))
        nxt = sample_next(logits, s, job.generator).tolist()  # (rows,) one joint draw: the engine's numbers
        job.steps += 1
        for row, tok in zip(job.rows, nxt, strict=True):
            row.seq.append(tok)  # a finished row still feeds its lane until the job leaves
            if row.done:
                continue
            row.tokens += 1
            self.tokens_out += 1
            if tok == self.eot:
                self._finish(row, "stop", flush=True)
                continue
            piece = row.stream.push(tok)
            if piece:
                job.emit(("text", row.index, piece))
            if row.stream.done:
                self._finish(row, "stop")
            elif job.steps >= s.max_new_tokens:
                self._finish(row, "length")

    def _finish(self, row: _Row, reason: str, flush: bool | None = None) -> None:
        """Mark a row finished; text held back (a possible stop-string start, half a character) is released
        unless a stop string ended it."""
        if flush if flush is not None else reason == "length":
            piece = row.stream.finish()
            if piece:
                row.job.emit(("text", row.index, piece))
        row.done = True
        row.job.emit(("finish", row.index, reason))

    def _leave(self, job: Job) -> None:
        """Drop a job, move the highest lanes into its holes, and tell it it is over."""
        self._active.remove(job)
        gone = {r.lane for r in job.rows}
        keep = [r for r in self._lanes if r.lane not in gone]
        for new, row in enumerate(keep):
            if row.lane != new:
                self._copy_lane(row.lane, new, row.ctx)
                row.lane = new
        self._lanes = keep
        self.jobs_done += 1
        if not job.cancelled:
            prompt_tokens = sum(len(p) for p in job.prompts)
            done = sum(r.tokens for r in job.rows)
            job.emit(("end", {"prompt_tokens": prompt_tokens, "completion_tokens": done,
                              "total_tokens": prompt_tokens + done}))

    # ---- model calls --------------------------------------------------------------------------------

    def _copy_lane(self, src: int, dst: int, upto: int | None = None) -> None:
        if self.cached:
            n = self.block_size if upto is None else upto
            self.cache.k[:, dst, :, :n] = self.cache.k[:, src, :, :n]
            self.cache.v[:, dst, :, :n] = self.cache.v[:, src, :, :n]

    def _prefill(self, lanes: list[int], windows: torch.Tensor) -> torch.Tensor:
        """Run windows (G, T) into `lanes` from slot 0; return the next logits (G, V)."""
        T = windows.size(1)
        if not self.cached:
            logits, _ = self.model(windows, last_only=True)
            return logits[:, -1, :].float()
        view = self.cache.prefill_view(torch.tensor(lanes, device=self.device))
        logits, _ = self.model(windows, cache=view, positions=torch.arange(T, device=self.device), last_only=True)
        return logits[:, -1, :].float()

    def _decode(self) -> None:
        """Feed every lane its last token; set each job's logits. A full window slides instead."""
        W, rows = self.block_size, self._lanes
        A = len(rows)
        logits = torch.empty(A, self.vocab_size, device=self.device)  # (A, V)
        slide = [r.lane for r in rows if r.ctx == W]  # the new token would make the window W + 1 long
        if not self.cached:
            for r in rows:  # the engine's uncached reference: each row's whole window, same sliding policy
                if len(r.seq) - r.start > W:
                    r.start = len(r.seq) - r.keep
                logits[r.lane] = self._prefill([r.lane], torch.tensor([r.seq[r.start:]], device=self.device))[0]
            slide = []
        elif len(slide) < A:
            tokens = torch.tensor([[r.seq[-1]] for r in rows], device=self.device)  # (A, 1)
            slot = torch.tensor([min(r.ctx, W - 1) for r in rows], device=self.device)  # (A,) a sliding row: junk
            view_len = min(max(r.ctx for r in rows) + 1, W)
            mask = (self.key_pos[:view_len][None, :] <= slot[:, None])[:, None, None, :]  # (A, 1, 1, S)
            view = _LaneView(self.cache, slot, view_len)
            out, _ = self.model(tokens, cache=view, attn_mask=mask, positions=slot[:, None], last_only=True)
            logits[:] = out[:, -1, :].float()
        for keep in sorted({rows[lane].keep for lane in slide}):  # one prefill per window length
            lanes = [lane for lane in slide if rows[lane].keep == keep]
            windows = torch.tensor([rows[lane].seq[-keep:] for lane in lanes], device=self.device)  # (G, keep)
            logits[lanes] = self._prefill(lanes, windows)
        for r in rows:
            r.ctx = r.keep if r.ctx == W else r.ctx + 1
        for job in self._active:
            job.logits = logits[[r.lane for r in job.rows]]  # (rows, V)


class _LaneView:
    """The model's cache argument for a decode step over lanes 0..A-1: one new key per lane at its slot."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, view_len: int):
        self.cache, self.slots, self.view_len = cache, slots, view_len  # slots (A,)
        self.lanes = torch.arange(slots.size(0), device=slots.device)

    @property
    def pos(self) -> int:
        return self.view_len - 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        A = self.slots.size(0)
        kl, vl = self.cache.k[layer], self.cache.v[layer]  # (B, nh, cap, hs)
        kl[self.lanes, :, self.slots] = k[:, :, 0]  # k (A, nh, 1, hs): lane a's key to slot slots[a]
        vl[self.lanes, :, self.slots] = v[:, :, 0]
        return kl[:A, :, : self.view_len], vl[:A, :, : self.view_len]  # (A, nh, S, hs); the mask hides the rest

"""Continuous batching: one worker thread admits requests into the generation engine's decode core, and turns
what it samples into text events.

Owns `Scheduler` (the queue, admission, the worker thread, and each job's bookkeeping: its rows' text
streams, finish reasons, token counts and log-probabilities, delivered as events) and `Job` (one request:
prompts, n samples each, sampling settings, where its events go). Does not call the model: the KV cache,
prefill, decoding, sliding past the block and sampling all belong to `generate.DecodeCore`, which drives
`scratchgpt sample` the same way. Does not own HTTP, request validation or response formats (`app.py`,
`schemas.py`).

A step. Cancelled jobs leave; waiting jobs join while lanes are free (first come, first served) and are
prefilled together (prompts of equal length in one forward); the core samples one token for every row, each
job with its own generator (so a seed gives the same text whatever else is running, and the same text as
`sample`); the tokens come back to the host once for all jobs; each row's text stream turns them into
pieces (whole characters, stop strings, the end-of-text rule); finished jobs leave; the core feeds the
remaining rows their tokens (one decode forward for all of them).

Isolation. A failure while admitting or sampling one job fails that job alone; only a failure of the shared
decode step fails the jobs in it, and the worker goes on serving.

Events reach the job's asyncio queue through `loop.call_soon_threadsafe`:
("prompt", p, token_ids, logprobs, tops) once per prompt when echo logprobs were asked for;
("text", row, piece, entries) where entries are (token_id, logprob, [(id, logprob), ...]) for the tokens
the piece came from (empty without logprobs); ("finish", row, reason) once per row; ("end", usage) last,
or ("error", message).
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..generate import DecodeCore, Request, Sampled
from ..sampling import SamplingSettings, TextStream, stop_token_ids

Emit = Callable[[tuple], None]
Entry = tuple[int, float, list[tuple[int, float]]]  # a token, its log-probability, the top alternatives


@dataclass(eq=False)
class _Row:
    index: int  # row number within its job (prompt-major)
    stream: TextStream
    tokens: int = 0  # completion tokens counted until the row finished
    entries: list[Entry] = field(default_factory=list)  # log-probabilities not yet sent with a piece
    done: bool = False


@dataclass(eq=False)
class Job:
    """One request: `prompts` (token ids, each within the context), `n` samples of each."""

    prompts: list[list[int]]
    n: int
    settings: SamplingSettings
    emit: Emit
    logprobs: int | None = None  # log-probabilities of sampled tokens and this many alternatives
    echo_logprobs: bool = False  # and of the prompt's tokens
    id: int = 0
    rows: list[_Row] = field(default_factory=list)
    request: Request | None = None
    cancelled: bool = False
    steps: int = 0

    def cancel(self) -> None:
        """Ask the worker to drop this job at its next step (its lanes are freed then)."""
        self.cancelled = True

    @property
    def width(self) -> int:
        return len(self.prompts) * self.n


class Scheduler:
    """Serves jobs from one background thread; `submit` is safe from any thread."""

    def __init__(self, model: nn.Module, tokenizer, max_batch: int = 32, max_waiting: int = 256,
                 cuda_graphs: bool = True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.core = DecodeCore(model, max_batch, vocab_limit=tokenizer.vocab_size, cuda_graphs=cuda_graphs)
        self.block_size = self.core.block_size
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self._paused = False
        self._pause_at: int | None = None  # pause_after's threshold
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
            self._pause_at = None
            self._cond.notify_all()

    def pause_after(self, tokens: int) -> None:
        """Hold the worker once it has generated `tokens` more tokens (tests act mid-stream this way,
        whatever the machine's speed); `resume` lets it go on."""
        with self._cond:
            self._pause_at = self.tokens_out + tokens

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompts: list[list[int]], n: int, settings: SamplingSettings, emit: Emit,
               logprobs: int | None = None, echo_logprobs: bool = False) -> Job | None:
        """Queue a job; None when the waiting queue is full (the caller answers 503). The caller has checked
        the request: prompts of 1 to block_size valid ids, prompts x n within max_batch."""
        if not 1 <= len(prompts) * n <= self.max_batch:
            raise ValueError(f"a job needs 1 to {self.max_batch} rows, got {len(prompts) * n}")
        if any(not 1 <= len(p) <= self.block_size for p in prompts):
            raise ValueError(f"every prompt must be 1 to {self.block_size} tokens long")
        job = Job([list(p) for p in prompts], n, settings, emit, logprobs, echo_logprobs)
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
        active = list(self._active)
        return {"active_requests": len(active), "active_rows": sum(j.width for j in active),
                "waiting_requests": waiting, "max_batch": self.max_batch, "peak_batch_requests": self.peak_jobs,
                "peak_batch_rows": self.peak_rows, "steps": self.steps, "tokens_generated": self.tokens_out,
                "requests_done": self.jobs_done}

    def jobs(self) -> list[Job]:
        """The jobs decoding now (a snapshot)."""
        return list(self._active)

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
                except Exception as e:  # the shared decode step failed: its jobs hear of it, the server goes on
                    traceback.print_exc()
                    for job in list(self._active):
                        self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        with self._cond:
            jobs = self._active + list(self._waiting)
            self._waiting.clear()
        for job in jobs:
            self._fail(job, "the server is shutting down")

    def _fail(self, job: Job, message: str) -> None:
        """End one job with an error event and free whatever it holds."""
        if job in self._active:
            self._active.remove(job)
        if job.request is not None and job.request in self.core.requests:
            self.core.release(job.request)
        if not job.cancelled:
            job.emit(("error", message))

    def _step(self) -> None:
        for job in [j for j in self._active if j.cancelled]:
            self._leave(job)
        self._admit()
        if not self._active:
            return
        self.peak_jobs = max(self.peak_jobs, len(self._active))
        self.peak_rows = max(self.peak_rows, sum(j.width for j in self._active))
        for job in [j for j in self._active if j.settings.max_new_tokens == 0]:  # prompt scores only
            for row in job.rows:
                self._finish(job, row, "length")
            self._leave(job)
        sampled = []
        for job in list(self._active):
            try:
                sampled.extend(self.core.sample([job.request]))
            except Exception as e:  # noqa: BLE001 - this job's settings or state: fail it alone
                traceback.print_exc()
                self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        for s, host in zip(sampled, _to_host(sampled), strict=True):
            job = next(j for j in self._active if j.request is s.request)
            try:
                self._deliver(job, *host)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        for job in [j for j in self._active if j.cancelled or all(r.done for r in j.rows)]:
            self._leave(job)
        live = {j.request for j in self._active}
        self.core.advance([s for s in sampled if s.request in live])
        self.steps += 1
        with self._cond:
            if self._pause_at is not None and self.tokens_out >= self._pause_at:
                self._paused, self._pause_at = True, None

    def _admit(self) -> None:
        """Take waiting jobs in order while their rows fit, and prefill them together."""
        jobs = []
        with self._cond:
            free = self.max_batch - sum(j.width for j in self._active)
            while self._waiting and (self._waiting[0].cancelled or self._waiting[0].width <= free):
                job = self._waiting.popleft()
                if not job.cancelled:
                    jobs.append(job)
                    free -= job.width
        if not jobs:
            return
        for job in jobs:
            job.request = Request(job.prompts, job.n, job.settings, logprobs=job.logprobs,
                                  prompt_logprobs=job.echo_logprobs)
            stop = stop_token_ids(self.tokenizer, job.settings)
            job.rows = [_Row(i, TextStream(self.tokenizer, job.settings.stop, job.prompts[i // job.n], stop))
                        for i in range(job.width)]
        try:
            self.core.add([job.request for job in jobs])
            started = jobs
        except Exception:  # noqa: BLE001 - find the job at fault: each alone
            for job in jobs:
                if job.request in self.core.requests:
                    self.core.release(job.request)
            started = []
            for job in jobs:
                try:
                    self.core.add([job.request])
                    started.append(job)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        for job in started:
            self._active.append(job)
            if job.echo_logprobs:
                for p, (chosen, values, ids) in enumerate(job.request.prompt_scores):
                    job.emit(("prompt", p, job.prompts[p], [None, *chosen.tolist()],
                              [None, *(_tops(v, i) for v, i in zip(values.tolist(), ids.tolist(), strict=True))]))

    def _deliver(self, job: Job, tokens: list[int], logprobs: list[float] | None,
                 tops: list[list[tuple[int, float]]] | None) -> None:
        """One sampled token per row: text pieces, log-probabilities, finish reasons."""
        job.steps += 1
        for i, (row, tok) in enumerate(zip(job.rows, tokens, strict=True)):
            if row.done:
                continue  # a finished row still feeds its lane until the job leaves
            row.tokens += 1
            self.tokens_out += 1
            if logprobs is not None and tok not in row.stream.stop_ids:
                row.entries.append((tok, logprobs[i], tops[i]))
            piece = row.stream.push(tok)
            if row.stream.done:
                self._send(job, row, piece)
                self._finish(job, row, "stop")
            elif job.steps >= job.settings.max_new_tokens:
                self._send(job, row, piece + row.stream.finish())
                self._finish(job, row, "length")
            elif piece:
                self._send(job, row, piece)

    @staticmethod
    def _send(job: Job, row: _Row, piece: str) -> None:
        if piece or row.entries:
            job.emit(("text", row.index, piece, row.entries))
            row.entries = []

    @staticmethod
    def _finish(job: Job, row: _Row, reason: str) -> None:
        row.done = True
        job.emit(("finish", row.index, reason))

    def _leave(self, job: Job) -> None:
        """Drop a job: free its lanes and tell it it is over (the usage counts what the model saw)."""
        self._active.remove(job)
        if job.request is not None and job.request in self.core.requests:
            self.core.release(job.request)
        self.jobs_done += 1
        if not job.cancelled:
            prompt_tokens = sum(len(p) for p in job.prompts)
            done = sum(r.tokens for r in job.rows)
            job.emit(("end", {"prompt_tokens": prompt_tokens, "completion_tokens": done,
                              "total_tokens": prompt_tokens + done}))


def _tops(values: list[float], ids: list[int]) -> list[tuple[int, float]]:
    return list(zip(ids, values, strict=True))


def _to_host(sampled: list[Sampled]) -> list[tuple[list[int], list[float] | None, list | None]]:
    """Every job's tokens (and log-probabilities) back on the host in one transfer: packed into one float64
    tensor (token ids below 2**53 are exact in it), copied once, unpacked per job."""
    if not sampled:
        return []
    parts = []
    for s in sampled:
        parts.append(s.tokens.double())
        if s.logprobs is not None:
            parts += [s.logprobs.double(), s.top_values.double().flatten(), s.top_ids.double().flatten()]
    flat = torch.cat(parts).cpu().tolist()
    out, at = [], 0
    for s in sampled:
        rows = s.tokens.numel()
        tokens = [int(x) for x in flat[at:at + rows]]
        at += rows
        if s.logprobs is None:
            out.append((tokens, None, None))
            continue
        k = s.top_values.size(-1)
        logprobs = flat[at:at + rows]
        values = flat[at + rows:at + rows + rows * k]
        ids = flat[at + rows + rows * k:at + rows + 2 * rows * k]
        at += rows + 2 * rows * k
        tops = [_tops(values[r * k:(r + 1) * k], [int(x) for x in ids[r * k:(r + 1) * k]]) for r in range(rows)]
        out.append((tokens, logprobs, tops))
    return out

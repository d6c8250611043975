"""Continuous batching: one worker thread admits requests into the generation engine's decode core and hands
what it samples to each request's `Completion`, whose events go back to the request's caller.

Owns `Scheduler` (the queue, admission, the worker thread, counters for /health) and `Job` (one request:
prompts, n samples each, sampling settings, where its events go, its `Completion`). Does not call the model:
the KV cache, prefill, decoding, sliding past the block and sampling all belong to `generate.DecodeCore`,
which drives `scratchgpt sample` the same way; does not assemble text or decide when a row ends
(`completion.py`, shared with `Engine`). Does not own HTTP, request validation or response formats
(`app.py`, `schemas.py`).

A step. Cancelled jobs leave; waiting jobs join while lanes are free (first come, first served) and are
prefilled together (prompts of equal length in one forward); the core samples one token for every row, each
job with its own generator (so a seed gives the same text as `sample`; beside other jobs its logits move by
float rounding only, about 1e-6 in float32 and the last bit in bf16: docs/precision.md); the tokens come back to the host once for all jobs; each job's completion turns them into events
(text pieces, finish reasons); finished jobs leave with their usage; the core feeds the remaining rows their
tokens (one decode forward for all of them).

Isolation. A failure while admitting or sampling one job fails that job alone; only a failure of the shared
decode step fails the jobs in it, and the worker goes on serving.

Events (`completion.Event`: typed dataclasses) reach the job's `emit`, called on the worker thread, in order:
`PromptLogprobs` once per prompt when echo log-probabilities were asked for, `TextPiece`s and a `Finished`
per row, then `Ended` with the usage, or `Failed` instead.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..completion import Completion, Ended, Event, Failed, PromptLogprobs, TokenLogprob
from ..generate import DecodeCore, Request, Sampled
from ..sampling import SamplingSettings
from ..tokenizers import Tokenizer

Emit = Callable[[Event], None]
Tops = tuple[tuple[int, float], ...]  # the most likely alternatives: (id, log-probability), most likely first


@dataclass(eq=False)
class Job:
    """One request: `prompts` (token ids, each within the context), `n` samples of each."""

    prompts: list[list[int]]
    n: int
    settings: SamplingSettings
    emit: Emit
    completion: Completion
    logprobs: int | None = None  # log-probabilities of sampled tokens and this many alternatives
    echo_logprobs: bool = False  # and of the prompt's tokens
    id: int = 0
    request: Request | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the worker to drop this job at its next step (its lanes are freed then)."""
        self.cancelled = True

    @property
    def width(self) -> int:
        return len(self.prompts) * self.n


class Scheduler:
    """Serves jobs from one background thread; `submit` is safe from any thread."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, max_batch: int = 32, max_waiting: int = 256,
                 cuda_graphs: bool = True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self._new_core = lambda: DecodeCore(model, max_batch, vocab_limit=tokenizer.vocab_size, cuda_graphs=cuda_graphs)
        self.core = self._new_core()
        self._core_broken = False  # a release failed: the core's state cannot be trusted; rebuilt at the next step
        self.block_size = self.core.block_size
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self._thread: threading.Thread | None = None
        # counters /health reads
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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompts: list[list[int]], n: int, settings: SamplingSettings, emit: Emit,
               logprobs: int | None = None, echo_logprobs: bool = False) -> Job | None:
        """Queue a job; None when the waiting queue is full (the caller answers 503). The caller has checked
        the request (`core.check` on the prompts; prompts x n within max_batch); the core checks the prompts
        again when the job is admitted, failing that job alone."""
        if not 1 <= len(prompts) * n <= self.max_batch:
            raise ValueError(f"a job needs 1 to {self.max_batch} rows, got {len(prompts) * n}")
        prompts = [list(p) for p in prompts]
        job = Job(prompts, n, settings, emit, Completion(prompts, n, settings, self.tokenizer), logprobs,
                  echo_logprobs)
        with self._cond:
            if len(self._waiting) >= self.max_waiting or not self.alive:  # a stopped worker would never run it
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
                    while not self._stop and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._stop:
                        break
                try:
                    self._step()
                except Exception as e:  # the shared decode step failed: its jobs hear of it, the server goes on
                    traceback.print_exc()
                    for job in list(self._active):
                        self._fail(job, f"generation failed: {type(e).__name__}: {e}")
                if self._core_broken:  # a fresh core (empty lanes) for whatever comes next
                    for job in list(self._active):
                        self._fail(job, "generation failed: the decode state was lost")
                    self.core, self._core_broken = self._new_core(), False
        with self._cond:
            jobs = self._active + list(self._waiting)
            self._waiting.clear()
        for job in jobs:
            self._fail(job, "the server is shutting down")

    def _fail(self, job: Job, message: str) -> None:
        """End one job with a `Failed` event and free whatever it holds."""
        if job in self._active:
            self._active.remove(job)
        if job.request is not None and self.core.holds(job.request):
            try:
                self.core.release(job.request)
            except Exception:  # noqa: BLE001 - the core is in a state it cannot leave: rebuilt after this step
                traceback.print_exc()
                self._core_broken = True
        if not job.cancelled:
            job.emit(Failed(message))

    @staticmethod
    def _send(job: Job, events: list[Event]) -> None:
        for ev in events:
            job.emit(ev)

    def _step(self) -> None:
        for job in [j for j in self._active if j.cancelled]:
            self._leave(job)
        self._admit()
        if not self._active:
            return
        self.peak_jobs = max(self.peak_jobs, len(self._active))
        self.peak_rows = max(self.peak_rows, sum(j.width for j in self._active))
        for job in [j for j in self._active if j.settings.max_new_tokens == 0]:  # prompt scores only
            self._send(job, job.completion.close())
            self._leave(job)
        sampled = []
        for job in list(self._active):
            try:
                sampled.extend(self.core.sample([job.request]))
            except Exception as e:  # noqa: BLE001 - this job's settings or state: fail it alone
                traceback.print_exc()
                self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        for s, (tokens, logprobs, tops) in zip(sampled, _to_host(sampled), strict=True):
            job = next(j for j in self._active if j.request is s.request)
            before = job.completion.completion_tokens
            try:
                self._send(job, job.completion.step(tokens, logprobs, tops))
            except Exception as e:  # noqa: BLE001 - e.g. its tokenizer failed on its text: fail it alone
                traceback.print_exc()
                self._fail(job, f"generation failed: {type(e).__name__}: {e}")
            self.tokens_out += job.completion.completion_tokens - before
        for job in [j for j in self._active if j.cancelled or j.completion.done]:
            self._leave(job)
        live = {j.request for j in self._active}
        self.core.advance([s for s in sampled if s.request in live])
        self.steps += 1

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
        try:
            self.core.add([job.request for job in jobs])
            started = jobs
        except Exception:  # noqa: BLE001 - find the job at fault: each alone
            for job in jobs:
                if self.core.holds(job.request):
                    self.core.release(job.request)
            started = []
            for job in jobs:
                try:
                    self.core.add([job.request])
                    started.append(job)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        self._active.extend(started)  # all of them first: each holds lanes from here on
        for job in started:
            if job.echo_logprobs:
                try:
                    for p, scores in enumerate(self.core.prompt_scores(job.request)):
                        self._send(job, [prompt_logprobs(p, job.prompts[p], scores)])
                except Exception as e:  # noqa: BLE001 - this job's scores: fail it alone
                    traceback.print_exc()
                    self._fail(job, f"generation failed: {type(e).__name__}: {e}")

    def _leave(self, job: Job) -> None:
        """Drop a job: free its lanes and tell it it is over (the usage counts what the model saw)."""
        self._active.remove(job)
        if job.request is not None and self.core.holds(job.request):
            self.core.release(job.request)
        self.jobs_done += 1
        if not job.cancelled:
            job.emit(Ended(job.completion.usage()))


def prompt_logprobs(p: int, ids: list[int], scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> PromptLogprobs:
    """Prompt p's tokens with their log-probabilities from the core's prefill scores (the first has none)."""
    chosen, values, top_ids = (t.tolist() for t in scores)
    entries = [TokenLogprob(ids[0], None, None)]
    entries += [TokenLogprob(tok, lp, tuple(zip(i, v, strict=True)))
                for tok, lp, v, i in zip(ids[1:], chosen, values, top_ids, strict=True)]
    return PromptLogprobs(p, tuple(entries))


def _to_host(sampled: list[Sampled]) -> list[tuple[list[int], list[float] | None, list[Tops] | None]]:
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
        tops = [tuple(zip((int(x) for x in ids[r * k:(r + 1) * k]), values[r * k:(r + 1) * k], strict=True))
                for r in range(rows)]
        out.append((tokens, logprobs, tops))
    return out

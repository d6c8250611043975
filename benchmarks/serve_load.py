"""Serving under load: concurrent streaming clients against `scratchgpt serve` on loopback.

    python benchmarks/serve_load.py                       # a fresh small model (random weights), CPU
    python benchmarks/serve_load.py --run-dir runs/shakespeare_char_cpu --clients 50 --max-tokens 128

Starts the server as a subprocess (`python -m scratchgpt.cli serve RUN --max-batch B`), so clients and
server do not share an interpreter. Then:

1. load: `--clients` streaming clients at once (more than the batch: the rest queue), each asking for
   `--max-tokens` tokens, the whole phase bounded by `--deadline` seconds; /health is polled every 0.2 s
   throughout. Reports time to first token (p50/p95), total tokens/s, completed and failed requests, and
   /health answers (ok / failed, slowest).
2. batching: `--compare` requests all at once, then the same requests one after another: total tokens/s of
   each, and the ratio (what continuous batching buys).
3. hostile (`--hostile N`): N rounds of bad requests at once (an 8 MB body over the 4 MB cap, a 3 MB prompt
   that must be tokenized before it is refused as too long, a seed past 64 bits, logprobs 6, broken JSON)
   beside 4 ordinary streaming requests, with /health polled every 0.05 s from another process (this one is
   busy sending the bad bodies): the status of each kind, whether
   the ordinary ones completed, and /health's p50 / slowest answer.

The fresh model, when no --run-dir is given, is a char model with random weights (speed does not depend on
them): 4 layers / 4 heads / 128 wide, block 256 (0.8M parameters), the vocabulary of printable ASCII.
Prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def make_small_run(out: Path) -> Path:
    import torch

    from scratchgpt.checkpoint import MODEL, save_weights, write_run_header
    from scratchgpt.config import from_dict
    from scratchgpt.models import build_model
    from scratchgpt.tokenizers import CharTokenizer

    tok = CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])
    cfg = from_dict({"data": {"dir": "unused"}, "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256,
                                                           "vocab_size": tok.vocab_size}}, name="serve_load_small")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    write_run_header(out, cfg, tok, model.num_params())
    save_weights(out / MODEL, model, 0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_stream(client: httpx.AsyncClient, body: dict, timeout: float) -> dict:
    """One streaming request: time to first text, tokens (from usage), wall time, or the error."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return {"error": f"HTTP {r.status_code}: {r.text[:120]}"}
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        return {"error": msg["error"]["message"]}
                    if first is None and any(c.get("text") for c in msg.get("choices", [])):
                        first = time.perf_counter() - t0
                    if msg.get("usage"):
                        tokens = msg["usage"]["completion_tokens"]
    except TimeoutError:
        return {"error": "timed out"}
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"ttft": first, "tokens": tokens, "seconds": time.perf_counter() - t0}


async def poll_health(client: httpx.AsyncClient, stop: asyncio.Event, out: dict) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = await client.get("/health", timeout=5)
            ok = r.status_code == 200 and r.json()["status"] == "ok"
        except httpx.HTTPError:
            ok = False
        out["ok" if ok else "failed"] += 1
        out["slowest"] = max(out["slowest"], time.perf_counter() - t0)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


def body(i: int, max_tokens: int) -> dict:
    return {"prompt": f"Request {i}: ", "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}


async def load_phase(base: str, clients: int, max_tokens: int, deadline: float) -> dict:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=None) as client:
        health = {"ok": 0, "failed": 0, "slowest": 0.0}
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(client, stop, health))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, body(i, max_tokens), deadline) for i in range(clients)))
        wall = time.perf_counter() - t0
        stop.set()
        await poller
    return {"results": results, "wall": wall, "health": health}


async def batching_phase(base: str, n: int, max_tokens: int, deadline: float) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=None) as client:
        t0 = time.perf_counter()
        together = await asyncio.gather(*(one_stream(client, body(i, max_tokens), deadline) for i in range(n)))
        t_together = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = [await one_stream(client, body(i, max_tokens), deadline) for i in range(n)]
        t_alone = time.perf_counter() - t0
    for r in together + alone:
        if "error" in r:
            raise SystemExit(f"batching phase: a request failed: {r['error']}")
    return sum(r["tokens"] for r in together) / t_together, sum(r["tokens"] for r in alone) / t_alone


HOSTILE = {  # kind: (request arguments, the status that kind must get)
    "body over the cap": (lambda: {"content": b'{"prompt": "' + b"x" * (8 * 2**20) + b'"}'}, 413),
    "3 MB prompt": (lambda: {"json": {"prompt": "to be or not " * 240_000, "max_tokens": 1}}, 400),
    "seed past 64 bits": (lambda: {"json": {"prompt": "x", "max_tokens": 1, "seed": 2**70}}, 400),
    "logprobs 6": (lambda: {"json": {"prompt": "x", "max_tokens": 1, "logprobs": 6}}, 400),
    "broken JSON": (lambda: {"content": b'{"prompt": "x", "max_tok'}, 400),
}


async def hostile_phase(base: str, rounds: int, max_tokens: int, deadline: float) -> dict:
    """Bad requests of every HOSTILE kind, `rounds` times over, at once, beside 4 ordinary streams."""
    statuses: dict[str, list[int]] = {k: [] for k in HOSTILE}
    headers = {"content-type": "application/json"}

    async def bad(client: httpx.AsyncClient, kind: str) -> None:
        try:
            r = await client.post("/v1/completions", headers=headers, timeout=deadline, **HOSTILE[kind][0]())
            statuses[kind].append(r.status_code)
        except httpx.HTTPError:
            statuses[kind].append(0)

    # /health is polled from another process: this one's event loop is busy building and sending megabytes
    # of bad bodies, and its own delays are not the server's
    ctx = multiprocessing.get_context("spawn")
    stop, answers = ctx.Event(), ctx.Queue()
    poller = ctx.Process(target=_poll_health_process, args=(base, stop, answers))
    poller.start()
    await asyncio.sleep(1.0)  # the poller is up and polling before the first bad request
    async with httpx.AsyncClient(base_url=base, timeout=deadline) as client:
        good = [one_stream(client, body(1000 + i, max_tokens), deadline) for i in range(4)]
        results = await asyncio.gather(*good, *(bad(client, k) for _ in range(rounds) for k in HOSTILE))
    await asyncio.sleep(0.5)
    stop.set()
    health = answers.get(timeout=30)
    poller.join(30)
    return {"health": health, "statuses": statuses, "good": results[:4]}


def _poll_health_process(base: str, stop, answers) -> None:
    """GET /health every 0.05 s until `stop`; put {"ok", "failed", "slowest", "times"} on `answers`."""
    out: dict = {"ok": 0, "failed": 0, "slowest": 0.0, "times": []}
    with httpx.Client(base_url=base, timeout=5) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = client.get("/health")
                ok = r.status_code == 200 and r.json()["status"] == "ok"
            except httpx.HTTPError:
                ok = False
            dt = time.perf_counter() - t0
            out["ok" if ok else "failed"] += 1
            out["slowest"] = max(out["slowest"], dt)
            out["times"].append(dt)
            stop.wait(0.05)
    answers.put(out)


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="a run directory to serve (default: a fresh small model)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--compare", type=int, default=32, help="requests at once vs one after another (0: skip)")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds the load phase may take in all")
    ap.add_argument("--threads", type=int, default=0, help="the server's CPU threads (0: torch's default)")
    ap.add_argument("--hostile", type=int, default=0, help="rounds of bad requests beside ordinary ones (0: skip)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run_dir) if args.run_dir else make_small_run(Path(tmp.name) / "small")
    port = free_port()
    cmd = [sys.executable, "-m", "scratchgpt.cli", "serve", str(run), "--port", str(port), "--max-batch",
           str(args.max_batch), "--max-waiting", str(max(args.clients, args.compare) * 2), "--threads", str(args.threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        info = httpx.get(f"{base}/info").json()
        httpx.post(f"{base}/v1/completions", json={"prompt": "warm up", "max_tokens": 8}, timeout=60)

        load = asyncio.run(load_phase(base, args.clients, args.max_tokens, args.deadline))
        ok = [r for r in load["results"] if "error" not in r]
        errors = [r["error"] for r in load["results"] if "error" in r]
        ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
        tokens = sum(r["tokens"] for r in ok)
        together = alone = None
        if args.compare:
            together, alone = asyncio.run(batching_phase(base, args.compare, args.max_tokens, args.deadline))
        hostile = asyncio.run(hostile_phase(base, args.hostile, args.max_tokens, args.deadline)) if args.hostile else None
        alive = server.poll() is None and httpx.get(f"{base}/health", timeout=5).status_code == 200
        stats = httpx.get(f"{base}/health").json()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()

    f = info["facts"]
    print(f"model: {info['model']}, {f['parameters']:,} parameters, context {f['context']}, {f['tokenizer']} tokenizer; "
          f"max batch {args.max_batch}; peak batch seen {stats['peak_batch_rows']} sequences")
    if errors:
        print(f"errors ({len(errors)}): {sorted(set(errors))[:5]}")
    h = load["health"]
    rows = [
        ("load: clients (streaming)", f"{args.clients} x {args.max_tokens} tokens"),
        ("load: completed / failed", f"{len(ok)} / {len(errors)}"),
        ("load: time to first token p50 / p95", f"{pct(ttft, 50) * 1000:.0f} / {pct(ttft, 95) * 1000:.0f} ms"
         if ttft else "-"),
        ("load: total throughput", f"{tokens / load['wall']:,.0f} tokens/s ({tokens:,} tokens in {load['wall']:.1f} s)"),
        ("load: /health during the load", f"{h['ok']} ok, {h['failed']} failed, slowest {h['slowest'] * 1000:.0f} ms"),
        ("server up afterwards", "yes" if alive else "NO"),
    ]
    if together is not None:
        rows += [(f"{args.compare} concurrent: total throughput", f"{together:,.0f} tokens/s"),
                 (f"{args.compare} sequential: total throughput", f"{alone:,.0f} tokens/s"),
                 ("concurrent / sequential", f"{together / alone:.1f}x")]
    hostile_failed = False
    if hostile is not None:
        hh, times = hostile["health"], hostile["health"]["times"]
        for kind, got in hostile["statuses"].items():
            want = HOSTILE[kind][1]
            hostile_failed |= any(code != want for code in got)
            rows.append((f"hostile: {kind} (want {want})", ", ".join(f"{got.count(c)} x {c}" for c in sorted(set(got)))))
        good_ok = sum("error" not in r for r in hostile["good"])
        hostile_failed |= good_ok != len(hostile["good"]) or hh["failed"] > 0
        rows += [("hostile: ordinary streams beside them", f"{good_ok} of {len(hostile['good'])} completed"),
                 ("hostile: /health p50 / slowest", f"{pct(times, 50) * 1000:.0f} / {hh['slowest'] * 1000:.0f} ms "
                  f"({hh['ok']} ok, {hh['failed']} failed)")]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n| {'-' * width} | --- |")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    if errors or not alive or hostile_failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

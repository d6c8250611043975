"""Serving: the continuous-batching scheduler against the engine, the OpenAI-compatible API through the real
`openai` client, validation errors naming their field, disconnects freeing lanes, requests batched together."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from scratchgpt.checkpoint import load_model as ckpt_load  # noqa: E402
from scratchgpt.cli import main as cli_main  # noqa: E402
from scratchgpt.completion import Ended, Failed, Finished, TextPiece  # noqa: E402
from scratchgpt.generate import Engine  # noqa: E402
from scratchgpt.models import GPT, GPTConfig  # noqa: E402
from scratchgpt.models.bigram import BigramLanguageModel  # noqa: E402
from scratchgpt.sampling import SamplingSettings  # noqa: E402
from scratchgpt.serve import ServeLimits, create_app  # noqa: E402
from scratchgpt.serve.scheduler import Scheduler  # noqa: E402
from scratchgpt.tokenizers import CharTokenizer, Tokenizer  # noqa: E402
from serve_util import gate, held_after, make_run, running_server, special_chain_app, wait_for  # noqa: E402

LIMITS = ServeLimits(max_batch=8, max_tokens=300, max_n=4, max_prompt_tokens=100, max_waiting=16)


@pytest.fixture(scope="module")
def run_dir(small_text_dir, tmp_path_factory):
    return make_run(small_text_dir, tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(run_dir):
    app = create_app(run_dir, LIMITS)
    with running_server(app) as base:
        yield base, app.state.scheduler, app.state.served


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def engine(server):
    served = server[2]
    return Engine(served.model, served.tokenizer)


# ---- the scheduler on its own ------------------------------------------------------------------------------

class Collector:
    """A job's events as the scheduler emits them: texts and finish reasons per row, then `end` (Ended or
    Failed)."""

    def __init__(self):
        self.texts: dict[int, str] = {}
        self.reasons: dict[int, str] = {}
        self.end = None
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, ev):
        if isinstance(ev, TextPiece):
            self.texts[ev.row] = self.texts.get(ev.row, "") + ev.text
            self.first.set()
        elif isinstance(ev, Finished):
            self.reasons[ev.row] = ev.reason
        elif isinstance(ev, (Ended, Failed)):
            self.end = ev
            self.done.set()

    def rows(self, n):
        return [self.texts.get(i, "") for i in range(n)]


TOK = CharTokenizer.from_text("abcdefghij klmnop\n")


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "bigram":
        return BigramLanguageModel(TOK.vocab_size, 8)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, init_std=0.2,
                    vocab_size=TOK.vocab_size + (50 if kind == "padded" else 0),  # ids the tokenizer cannot decode
                    pos_emb="rope" if kind == "rope" else "learned")
    return GPT(cfg).eval()


@pytest.mark.parametrize("kind", ["gpt", "rope", "padded", "bigram"])
def test_scheduler_matches_engine_whatever_runs_beside(kind):
    """Jobs batched together (different prompts, lengths, n, settings, windows sliding past the block) give
    exactly what the engine gives each of them alone with the same seed."""
    model = _tiny(kind)
    eng = Engine(model, TOK)
    sched = Scheduler(model, TOK, max_batch=8)
    jobs = [
        (["abc"], 1, SamplingSettings(max_new_tokens=40, temperature=0.8, top_k=5, seed=3)),
        (["hello", "a"], 2, SamplingSettings(max_new_tokens=25, top_p=0.9, seed=7, window="half")),
        (["ab"], 1, SamplingSettings(max_new_tokens=30, temperature=0)),
        (["p"], 1, SamplingSettings(max_new_tokens=0, seed=1)),
    ]
    gate(sched).pause()
    sched.start()
    try:
        outs = []
        for prompts, n, s in jobs:
            c = Collector()
            assert sched.submit([eng.encode(p) for p in prompts], n, s, c) is not None
            outs.append(c)
        gate(sched).resume()
        for c in outs:
            assert c.done.wait(20)
        for (prompts, n, s), c in zip(jobs, outs, strict=True):
            want = eng.generate(prompts, s, num_samples=n)
            assert c.rows(len(prompts) * n) == want
            assert isinstance(c.end, Ended) and c.end.usage.completion_tokens == len(prompts) * n * s.max_new_tokens
            assert set(c.reasons.values()) == {"length"}
        assert sched.peak_jobs == len(jobs)
        assert sched.stats()["active_rows"] == 0
    finally:
        sched.stop()


def test_a_request_joins_a_running_batch_and_leaves_it():
    model = _tiny("gpt")
    eng = Engine(model, TOK)
    sched = Scheduler(model, TOK, max_batch=4).start()
    try:
        long = Collector()
        job = sched.submit([eng.encode("a")], 1, SamplingSettings(max_new_tokens=50_000, seed=1), long)
        assert long.first.wait(10)  # it is decoding
        short = Collector()
        s = SamplingSettings(max_new_tokens=30, temperature=0.7, seed=5)
        sched.submit([eng.encode("bad")], 2, s, short)
        assert short.done.wait(10)
        assert not long.done.is_set()  # the short one joined the running batch and left it
        assert short.rows(2) == eng.generate(["bad"], s, num_samples=2)
        assert sched.peak_jobs == 2 and sched.peak_rows == 3
        job.cancel()
        wait_for(lambda: sched.stats()["active_rows"] == 0, what="the cancelled job to free its lane")
        assert long.end is None  # a cancelled job hears nothing more
    finally:
        sched.stop()


def test_bpe_model_streams_whole_characters_and_stops_at_endoftext():
    from scratchgpt.tokenizers.bpe_train import train_bpe

    tok = train_bpe(["caf\u00e9 \u00fcber \u2603 \u65e5\u672c\u8a9e \U0001f600 the quick brown fox. " * 20], vocab_size=300)
    torch.manual_seed(8)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=tok.vocab_size, init_std=0.2))
    eng = Engine(model.eval(), tok)
    sched = Scheduler(model, tok, max_batch=4).start()
    try:
        for seed in range(2, 8):  # several seeds: some runs end at <|endoftext|>, some at max_tokens
            c = Collector()
            s = SamplingSettings(max_new_tokens=40, seed=seed)
            sched.submit([eng.encode("caf\u00e9 \u2603")], 1, s, c)
            assert c.done.wait(20)
            assert c.rows(1) == [eng.generate("caf\u00e9 \u2603", s)]  # the same end-of-text rule as `sample`
            ids = eng.generate_ids([eng.encode("caf\u00e9 \u2603")], s)[0]
            assert tok.eot_token not in ids
            assert c.reasons[0] == ("stop" if len(ids) < 40 else "length")
    finally:
        sched.stop()
    bigram = BigramLanguageModel(tok.vocab_size)
    with torch.no_grad():  # a model whose every next token is <|endoftext|> after "the"
        bigram.token_embedding_table.weight[tok.encode("the")[-1], tok.eot_token] = 100.0
    sched = Scheduler(bigram, tok, max_batch=4).start()
    try:
        c = Collector()
        sched.submit([tok.encode("the")], 1, SamplingSettings(max_new_tokens=40, temperature=0), c)
        assert c.done.wait(20)
        assert c.rows(1) == [""] and c.reasons == {0: "stop"} and c.end.usage.completion_tokens == 1
        c = Collector()  # asked to go on, it does
        sched.submit([tok.encode("the")], 1, SamplingSettings(max_new_tokens=5, temperature=0, ignore_eos=True), c)
        assert c.done.wait(20)
        assert c.reasons == {0: "length"} and c.end.usage.completion_tokens == 5
    finally:
        sched.stop()


class FlakyTokenizer(Tokenizer):
    """The char tokenizer, except that decoding text that starts with its `trigger` character (after the first
    token) fails: a job whose prompt ends in two of them breaks while generating (its text stream decodes the
    last two prompt tokens with each new one), and must break alone."""

    def __init__(self, inner):
        self.inner, self.kind, self.vocab_size = inner, inner.kind, inner.vocab_size
        self.trigger: str | None = None

    def encode(self, text):
        return self.inner.encode(text)

    def decode(self, ids):
        text = self.inner.decode(ids)
        if self.trigger is not None and text.startswith(self.trigger) and len(ids) > 1:
            raise RuntimeError("this tokenizer cannot decode that")
        return text


def test_one_jobs_failure_never_touches_another():
    tok = FlakyTokenizer(CharTokenizer.from_text("abcdefghij klmnop\n"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.vocab_size)).eval()
    s = SamplingSettings(max_new_tokens=30, seed=1)
    want = Engine(model, tok).generate("abc", s)
    tok.trigger = min(set(tok.inner.chars) - set("abc" + want))  # a character the good job never decodes
    sched = Scheduler(model, tok, max_batch=4)
    gate(sched).pause()
    sched.start()
    try:
        good, bad, after = Collector(), Collector(), Collector()
        sched.submit([tok.encode("abc")], 1, s, good)
        sched.submit([tok.encode("ab" + 2 * tok.trigger)], 2, s, bad)
        gate(sched).resume()  # both in one batch
        assert bad.done.wait(20) and good.done.wait(20)
        assert isinstance(bad.end, Failed) and "cannot decode" in bad.end.message
        assert isinstance(good.end, Ended) and good.rows(1) == [want]
        sched.submit([tok.encode("abc")], 1, s, after)  # and the server goes on serving
        assert after.done.wait(20) and after.rows(1) == good.rows(1)
    finally:
        sched.stop()


# ---- the API through the real openai client ----------------------------------------------------------------

def test_models_health_info_and_page(server, client):
    base, _, served = server
    assert [m.id for m in client.models.list().data] == [served.name]
    assert client.models.retrieve(served.name).id == served.name
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok" and health["max_batch"] == LIMITS.max_batch
    info = httpx.get(f"{base}/info").json()
    facts = info["facts"]
    from scratchgpt.checkpoint import load_model

    plain, _, _ = load_model(served.run_dir)  # the weights as trained: prepare's int8 or reordered ones are buffers
    assert facts["parameters"] == sum(p.numel() for p in plain.parameters()) > 0
    assert facts["tokenizer"] == "char" and facts["context"] == 16
    assert facts["checkpoint"] == "model-best.safetensors" and isinstance(facts["val_loss"], float)
    assert info["limits"]["max_tokens"] == LIMITS.max_tokens
    metrics = httpx.get(f"{base}/metrics").json()
    assert [r[0] for r in metrics["eval"]] == [3, 6] and len(metrics["train"]) == 6
    assert facts["val_loss"] == min(r[2] for r in metrics["eval"])
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    assert httpx.get(f"{base}/static/app.js").status_code == 200


def test_completion_stream_and_seed_match_the_engine(server, client, engine):
    name = server[2].name
    kw = dict(model=name, prompt="line 1", max_tokens=40, temperature=0.9, top_p=0.95, seed=11)
    want = engine.generate("line 1", max_new_tokens=40, temperature=0.9, top_p=0.95, seed=11)
    r = client.completions.create(**kw)
    assert r.object == "text_completion" and r.model == name
    assert [(c.index, c.text, c.finish_reason) for c in r.choices] == [(0, want, "length")]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 40, 46)
    pieces, reasons, usage = [], [], None
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            pieces.append(c.text)
            reasons.append(c.finish_reason)
        usage = chunk.usage or usage
    assert "".join(pieces) == want and len(pieces) > 10  # streamed piece by piece
    assert [x for x in reasons if x] == ["length"] and usage.completion_tokens == 40
    top_k = client.completions.create(**kw, extra_body={"top_k": 3})
    assert top_k.choices[0].text == engine.generate("line 1", max_new_tokens=40, temperature=0.9, top_p=0.95,
                                                    top_k=3, seed=11)


def test_n_prompts_echo_and_stop(server, client, engine):
    name = server[2].name
    r = client.completions.create(model=name, prompt=["the", "fox"], n=2, max_tokens=12, seed=4)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == engine.generate(["the", "fox"], num_samples=2, max_new_tokens=12, seed=4)
    greedy = engine.generate("line", max_new_tokens=30, temperature=0)
    stop = greedy[8:10]
    r = client.completions.create(model=name, prompt="line", max_tokens=30, temperature=0, stop=[stop], echo=True)
    assert r.choices[0].text == "line" + greedy[: greedy.index(stop)] and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=name, prompt="line", max_tokens=40, seed=2, extra_body={"window": "half"})
    assert r.choices[0].text == engine.generate("line", max_new_tokens=40, seed=2, window="half")
    ids = server[2].tokenizer.encode("line")
    r = client.completions.create(model=name, prompt=ids, max_tokens=30, temperature=0)
    assert r.choices[0].text == greedy


def test_logprobs_are_the_models_log_softmax(server, client):
    """echo + logprobs + max_tokens 0 scores a text: each prompt token's log-probability is a direct forward's
    log-softmax (the first has none); sampled tokens' log-probabilities too, streamed or not."""
    base, _, served = server
    model, tok = served.model, served.tokenizer
    text = "line 12: the"
    ids = tok.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)  # (T, V)
    r = client.completions.create(model=served.name, prompt=text, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    assert lp.tokens == list(text) and lp.text_offset == list(range(len(text)))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-5)
    for i in range(1, len(ids)):
        top = torch.topk(logp[i - 1], 3)
        expect = {tok.decode([j]): v for j, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)}
        expect.setdefault(text[i], want[i - 1])
        assert lp.top_logprobs[i] == pytest.approx(expect, abs=1e-5)
    # sampled tokens: greedy, so each chosen token is the most likely one, with the forward's log-probability
    g = client.completions.create(model=served.name, prompt=text, max_tokens=6, temperature=0, logprobs=0)
    out = g.choices[0].logprobs
    seq = list(ids)
    for i, piece in enumerate(out.tokens):
        with torch.no_grad():
            step = torch.log_softmax(model(torch.tensor([seq[-16:]]))[0][0, -1].float(), dim=-1)
        assert tok.decode([int(step.argmax())]) == piece and out.token_logprobs[i] == pytest.approx(step.max().item(), abs=1e-5)
        assert out.top_logprobs[i] == pytest.approx({piece: out.token_logprobs[i]}, abs=1e-6)
        seq.append(int(step.argmax()))
    assert "".join(out.tokens) == g.choices[0].text and out.text_offset == list(range(6))
    # streamed: the same lists, in pieces
    lists = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for chunk in client.completions.create(model=served.name, prompt=text, max_tokens=6, temperature=0, logprobs=0,
                                           echo=True, stream=True):
        for c in chunk.choices:
            if c.logprobs:
                for k in lists:
                    lists[k] += getattr(c.logprobs, k)
    assert lists["tokens"] == list(text) + out.tokens
    assert lists["token_logprobs"][1:] == pytest.approx(want + out.token_logprobs, abs=1e-6)
    assert lists["text_offset"] == list(range(len(text) + 6))


def test_an_openai_client_scores_continuations_as_a_harness_does(server, client):
    """The loglikelihood loop of an evaluation harness through the official client: for each candidate,
    echo + logprobs + max_tokens 0, then the log-probabilities of the tokens past the context."""
    served = server[2]
    model, tok = served.model, served.tokenizer
    context, candidates = "a quick", [" fox", " dog", " hen"]  # all within the context of 16
    scores = []
    for cont in candidates:
        r = client.completions.create(model=served.name, prompt=context + cont, max_tokens=0, echo=True, logprobs=1)
        lp = r.choices[0].logprobs
        cut = next(i for i, off in enumerate(lp.text_offset) if off >= len(context))
        scores.append(sum(lp.token_logprobs[cut:]))
        ids = tok.encode(context + cont)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)
        want = sum(logp[i - 1, ids[i]].item() for i in range(len(tok.encode(context)), len(ids)))
        assert scores[-1] == pytest.approx(want, abs=1e-4)
    assert len(set(scores)) == 3


def test_tokenize_detokenize_and_the_context_length(server, client):
    base, _, served = server
    r = httpx.post(f"{base}/tokenize", json={"prompt": "line 7"}).json()
    assert r == {"count": 6, "max_model_len": 16, "tokens": served.tokenizer.encode("line 7")}
    assert httpx.post(f"{base}/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "line 7"}
    bad = httpx.post(f"{base}/detokenize", json={"tokens": [10_000]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(f"{base}/tokenize", json={"prompt": "\u4e2d"}).status_code == 400
    assert httpx.get(f"{base}/v1/models").json()["data"][0]["max_model_len"] == 16


def test_a_prompt_longer_than_the_context_is_refused_or_truncated_on_request(server, client, engine):
    base, _, served = server
    long = "line 4: the quick brown fox"  # 27 characters, a context of 16
    r = httpx.post(f"{base}/v1/completions", json={"prompt": long, "max_tokens": 3})
    assert r.status_code == 400 and "context length is 16" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "context_length_exceeded"
    t = client.completions.create(model=served.name, prompt=long, max_tokens=5, temperature=0, echo=True,
                                  extra_body={"truncate_prompt_tokens": 16})
    assert t.usage.prompt_tokens == 16  # what the model saw
    assert t.choices[0].text == long[-16:] + engine.generate(long[-16:], max_new_tokens=5, temperature=0)


def test_hostile_requests_are_refused_before_queueing(server):
    base, sched, _ = server
    before = sched.stats()["requests_done"]
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "seed": 2**64})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    big = httpx.post(f"{base}/v1/completions", content=b'{"prompt": "' + b"a" * (5 * 2**20) + b'"}',
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    assert sched.stats()["requests_done"] == before  # nothing reached the scheduler
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_damaged_optional_run_files_never_stop_serving(run_dir, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "metrics.jsonl").write_bytes(b'{"kind": "eval", "step": 3}\n\xff\xfe garbage\n5\n[1, 2]\n')
    (damaged / "trainer_state.json").write_text("{not json", encoding="utf-8")
    (damaged / "loss.png").write_bytes(b"not a png")
    app = create_app(damaged, LIMITS)
    with running_server(app) as base:
        facts = httpx.get(f"{base}/info").json()["facts"]
        assert facts["val_loss"] is None and facts["step"] == 6
        assert httpx.get(f"{base}/metrics").json() == {"train": [], "eval": [[3, None, None]]}
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "line", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


class SlowTokenizer(Tokenizer):
    """A tokenizer that takes a second to encode a prompt that asks for it."""

    def __init__(self, inner):
        self.inner, self.kind, self.vocab_size = inner, inner.kind, inner.vocab_size

    def encode(self, text):
        if text.startswith("slow"):
            time.sleep(1.0)
        return self.inner.encode(text)

    def decode(self, ids):
        return self.inner.decode(ids)


def test_health_answers_while_a_prompt_is_being_tokenized(run_dir):
    from scratchgpt.serve import ServedModel

    model, tok, _ = ckpt_load(run_dir)
    app = create_app(ServedModel(model, SlowTokenizer(tok), name="slow"), LIMITS)
    with running_server(app) as base:
        done = {}

        def post():
            done["completion"] = httpx.post(f"{base}/v1/completions", json={"prompt": "slow line", "max_tokens": 1},
                                            timeout=30)
            done["at"] = time.monotonic()

        worker = threading.Thread(target=post)
        worker.start()
        time.sleep(0.2)  # the slow prompt is being tokenized now
        health = httpx.get(f"{base}/health", timeout=30)
        answered = time.monotonic()
        worker.join(30)
        assert health.status_code == 200 and done["completion"].status_code == 200
        assert answered < done["at"]  # the event loop was free while the prompt was tokenized


def test_a_megabytes_long_char_prompt_is_refused_without_being_tokenized(run_dir):
    """One id per character: the prompt's length alone says it cannot fit, so the server never spends the
    interpreter lock tokenizing it (what kept /health waiting when such prompts arrived together)."""
    from scratchgpt.serve import ServedModel

    model, tok, _ = ckpt_load(run_dir)
    calls = []

    class Counting(type(tok)):
        def encode_array(self, text, errors="strict"):
            calls.append(len(text))
            return super().encode_array(text, errors)

    counting = Counting(tok.chars, tok.specials)
    with running_server(create_app(ServedModel(model, counting, name="m"), LIMITS)) as base:
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "a" * 3_000_000, "max_tokens": 1}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "3,000,000" in r.json()["error"]["message"] and calls == []
        ok = httpx.post(f"{base}/v1/completions", json={"prompt": "a" * 8, "max_tokens": 1,
                                                         "truncate_prompt_tokens": 4}, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 4 and calls == [8]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 301}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "window": "quarter"}, "window"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 5}, "n"),
    ({"prompt": ["a", "b", "c"], "n": 3}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "\u4e2d"}, "prompt"),
    ({"prompt": [10_000]}, "prompt"),
    ({"prompt": "x" * 101}, "prompt"),
    ({"prompt": "x", "stop": [str(i) for i in range(17)]}, "stop"),  # the server's max_stop: 16
    ({"prompt": "x" * 17}, "prompt"),  # longer than the context of 16
    ({"prompt": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"prompt": "x", "truncate_prompt_tokens": 17}, "truncate_prompt_tokens"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"prompt": "x", "max_new_tokens": 5}, "max_new_tokens"),
    ({"prompt": "x", "model": "gpt-4"}, "model"),
])
def test_bad_requests_get_4xx_naming_the_field(server, body, param):
    r = httpx.post(f"{server[0]}/v1/completions", json=body)
    assert r.status_code == (404 if param == "model" else 400), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert param in err["message"] or param == "model"


def test_malformed_bodies_and_client_errors(server, client):
    base = server[0]
    for content in (b"{not json", b"[1, 2]"):
        r = httpx.post(f"{base}/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("the request body")
    assert httpx.get(f"{base}/v1/nope").json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server[2].name, prompt="x", max_tokens=10_000)
    assert e.value.body["param"] == "max_tokens"


def test_a_client_that_disconnects_mid_stream_frees_its_lanes(server):
    base, sched, _ = server
    idle = lambda: sched.stats()["active_rows"] == 0 and sched.stats()["waiting_requests"] == 0  # noqa: E731
    wait_for(idle, what=lambda: f"an idle scheduler ({sched.stats()})")
    before = sched.stats()["tokens_generated"]
    with held_after(sched, 4) as held:  # the scheduler holds after a few tokens: the request cannot run to its end
        with httpx.stream("POST", f"{base}/v1/completions",
                          json={"prompt": "line", "max_tokens": 300, "n": 2, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped line iterator closes the response, i.e. disconnects
            assert next(lines).startswith("data: ")
            wait_for(lambda: held.paused and sched.stats()["active_rows"] == 2,
                     what=lambda: f"the request to hold two lanes (paused {held.paused}, {sched.stats()})")
        # the response is closed: the server cancels the job while the scheduler still holds
        wait_for(lambda: sched.jobs() and all(j.cancelled for j in sched.jobs()), what="the cancel")
    wait_for(lambda: sched.stats()["active_rows"] == 0, what="the lanes to be freed")
    assert sched.stats()["tokens_generated"] - before < 2 * 300  # it stopped early
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_concurrent_requests_are_decoded_in_one_batch(server, client, engine):
    base, sched, served = server
    prompts = ["line 1", "fox", "the lazy", "dog."]
    results: dict[int, str] = {}

    def ask(i):
        r = client.completions.create(model=served.name, prompt=prompts[i], max_tokens=20, seed=i)
        results[i] = r.choices[0].text

    gate(sched).pause()
    sched.peak_jobs = 0
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: sched.stats()["waiting_requests"] == len(prompts), what="all requests to queue")
    finally:
        gate(sched).resume()
    for t in threads:
        t.join(30)
    assert sched.peak_jobs == len(prompts)  # all four decoded together
    for i, p in enumerate(prompts):
        assert results[i] == engine.generate(p, max_new_tokens=20, seed=i)


def test_many_streaming_clients_finish_or_fail_cleanly_while_health_answers(server):
    """A small load test (the benchmark runs 50): more clients than lanes and than the queue holds; each stream
    ends with [DONE] and its tokens, or gets a clean 503; /health answers throughout."""
    from concurrent.futures import ThreadPoolExecutor

    base, sched, _ = server
    old, sched.max_waiting = sched.max_waiting, 4
    health: list[int] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            health.append(httpx.get(f"{base}/health", timeout=10).status_code)
            stop.wait(0.05)

    def client(i):
        body = {"prompt": f"line {i}", "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, r.json()["error"]["code"]
            lines = [line for line in r.iter_lines() if line]
            usage = json.loads(lines[-2][6:])["usage"]
            return lines[-1], usage["completion_tokens"]

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(client, range(20)))
    finally:
        stop.set()
        poller.join()
        sched.max_waiting = old
    assert all(r in (("data: [DONE]", 24), (503, "overloaded")) for r in results), results
    assert results.count(("data: [DONE]", 24)) >= 4  # at least what the queue holds got through
    assert health and set(health) == {200}
    assert sched.stats()["active_rows"] == 0


def test_a_full_queue_answers_503_and_recovers(server, client):
    base, sched, served = server
    gate(sched).pause()
    old = sched.max_waiting
    sched.max_waiting = 1
    first: list = []
    t = threading.Thread(target=lambda: first.append(
        client.completions.create(model=served.name, prompt="a", max_tokens=5)))
    try:
        t.start()
        wait_for(lambda: sched.stats()["waiting_requests"] == 1, what="the first request to queue")
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "b", "max_tokens": 5})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    finally:
        sched.max_waiting = old
        gate(sched).resume()
    t.join(30)
    assert first and first[0].usage.completion_tokens == 5


def test_streamed_events_are_openai_sse(server):
    r = httpx.post(f"{server[0]}/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True,
                                                         "temperature": 0})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_cli_serve_errors_are_one_sentence(tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert cli_main(["serve", str(tmp_path), "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err
    assert cli_main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch: must be positive" in capsys.readouterr().err  # refused as it is parsed


# ---- special tokens are never text unless asked ----------------------------------------------------------------

def test_special_tokens_are_never_rendered_as_text_unless_asked():
    app, tok = special_chain_app(LIMITS)
    with running_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
        kw = dict(model="chain", prompt="a", max_tokens=6, temperature=0)
        assert client.completions.create(**kw).choices[0].text == "bab"
        streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
        assert streamed == "bab"
        shown = client.completions.create(**kw, extra_body={"skip_special_tokens": False}).choices[0].text
        assert shown == "<|assistant_end|>b<|user_start|>a<|assistant_end|>b"  # vLLM's flag shows them
        lp = client.completions.create(**kw, logprobs=1, echo=True).choices[0]
        assert lp.text == "abab" and lp.logprobs.tokens == ["a", "<|assistant_end|>", "b", "<|user_start|>", "a",
                                                             "<|assistant_end|>", "b"]
        assert lp.logprobs.text_offset == [0, 1, 1, 2, 2, 3, 3]  # a hidden token takes no room in the text
        ids = [tok.encode("a")[0], tok.special_tokens["<|user_start|>"]]  # a prompt of ids echoes its text only
        assert client.completions.create(model="chain", prompt=ids, max_tokens=0, echo=True).choices[0].text == "a"

"""One precision policy, every client (issue 19): for a small char run, under both branches of the policy
(SCRATCHGPT_NATIVE_BF16=1: bf16 weights; =0: float32; dtype auto), `scratchgpt sample`, `scratchgpt.load(run)`
and the server give the same text for a seed (in the server also beside another request), and the server's
echo log-probabilities equal `load(run).score(text)` and what `scratchgpt eval` computes, to 1e-5; and so with
weight-only int8 (`--quantize int8`), which every one of them applies the same way."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

import scratchgpt  # noqa: E402
from conftest import tiny_config  # noqa: E402
from scratchgpt.cli import main as cli_main  # noqa: E402
from scratchgpt.runtime import NATIVE_BF16_ENV  # noqa: E402
from scratchgpt.serve import create_app  # noqa: E402
from serve_util import gate, running_server, wait_for  # noqa: E402

PROMPT = "line 3"
TEXT = "line 12: the fox"  # 16 characters: one window of the context of 16


@pytest.fixture(scope="module")
def run_dir(small_text_dir, tmp_path_factory):
    """Wide enough (64) that bf16 rounding shows when two paths compute in different shapes."""
    from dataclasses import replace

    from scratchgpt.train import train

    out = tmp_path_factory.mktemp("same") / "run"
    cfg = tiny_config(small_text_dir, max_iters=4, eval_interval=4)
    train(replace(cfg, model=replace(cfg.model, n_embd=64, n_head=4)), out_dir=out, progress=False)
    return out


@pytest.mark.parametrize("native, dtype, quantize", [("1", "bfloat16", "none"), ("0", "float32", "none"),
                                                     ("1", "bfloat16", "int8"), ("0", "float32", "int8")])
def test_sample_api_server_and_eval_agree_under_each_policy(run_dir, tmp_path, capsys, monkeypatch, native, dtype,
                                                            quantize):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    lm = scratchgpt.load(run_dir, quantize=quantize)  # dtype auto: the policy's answer for this CPU class
    assert str(next(lm.model.parameters()).dtype) == f"torch.{dtype}"
    assert (type(lm.model.lm_head).__name__ == "Int8Linear") == (quantize == "int8")
    want = lm.generate(PROMPT, max_new_tokens=40, seed=5)
    q = ["--quantize", quantize]

    capsys.readouterr()
    assert cli_main(["sample", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", "40", "--seed", "5", *q]) == 0
    assert capsys.readouterr().out == PROMPT + want + "\n"

    scored = lm.score(TEXT)
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), "--text", str(tmp_path / "text.txt"), "--json", "--quiet", *q]) == 0
    report = json.loads(capsys.readouterr().out)

    app = create_app(run_dir, quantize=quantize)
    assert app.state.served.facts["dtype"] == dtype and app.state.served.facts["quantize"] == quantize
    with running_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
        name = app.state.served.name
        r = client.completions.create(model=name, prompt=PROMPT, max_tokens=40, seed=5, logprobs=0)
        assert r.choices[0].text == want
        # beside a request with a longer context in the same decode steps: the same numbers, so the same text
        sched = app.state.scheduler
        gate(sched).pause()
        with ThreadPoolExecutor(2) as pool:
            beside = pool.submit(client.completions.create, model=name, prompt=TEXT[:14], max_tokens=40, seed=1)
            again = pool.submit(client.completions.create, model=name, prompt=PROMPT, max_tokens=40, seed=5,
                                logprobs=0)
            wait_for(lambda: sched.stats()["waiting_requests"] == 2, what="both requests to queue")
            gate(sched).resume()
            assert again.result().choices[0].text == want and beside.result().choices[0].text
        assert sched.peak_jobs == 2
        # beside another request the step computes in other shapes (attention length, kernels by rows): float32
        # rounds that within 1e-6, bf16 in its last bit (docs/precision.md, "Batch invariance")
        assert again.result().choices[0].logprobs.token_logprobs == pytest.approx(
            r.choices[0].logprobs.token_logprobs, abs=1e-6 if dtype == "float32" else 0.1)
        r = client.completions.create(model=name, prompt=TEXT, max_tokens=0, echo=True, logprobs=1)
        served = np.array(r.choices[0].logprobs.token_logprobs[1:])
    assert np.abs(served - scored.token_logprobs).max() <= 1e-5
    assert report["texts"][0]["scored_tokens"] == len(served) == len(TEXT) - 1
    assert abs(report["texts"][0]["loss"] - float(-served.mean())) <= 1e-5


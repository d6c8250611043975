"""The playground page end to end in headless Chromium (Debian's, driven by Playwright): facts and loss curve
shown, type a prompt, Generate, streamed text appears, Stop cancels the request on the server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from scratchgpt.generate import Engine  # noqa: E402
from scratchgpt.serve import ServeLimits, create_app  # noqa: E402
from serve_util import gate, make_run, running_server, special_chain_app, wait_for  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for p in (os.environ.get("SCRATCHGPT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if p and Path(p).is_file():
            return p
    return None


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found: install Debian's (apt-get install chromium; scripts/test.sh does as root) "
                    "or set SCRATCHGPT_CHROMIUM")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                   executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            ctx.close()


def complete(page, fields: dict[str, str]) -> str:
    """Fill the fields, Generate, wait until done; the completion shown."""
    for selector, value in fields.items():
        page.fill(selector, value)
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent === 'done'")
    return page.inner_text("#completion")


def test_playground_streams_and_stops(small_text_dir, tmp_path_factory, browser_page):
    run = make_run(small_text_dir, tmp_path_factory.mktemp("browser") / "tiny")
    app = create_app(run, ServeLimits(max_batch=4, max_tokens=2000))
    sched, served = app.state.scheduler, app.state.served
    engine = Engine(served.model, served.tokenizer)
    page = browser_page
    with running_server(app) as base:
        page.goto(base)
        page.wait_for_function(f"document.getElementById('model-name').textContent === {served.name!r}")
        facts = page.inner_text("#facts")
        assert "parameters" in facts and "char" in facts and "val loss" in facts
        page.wait_for_function("document.getElementById('loss-note').textContent.includes('val loss')")

        # a whole generation: the streamed text is the engine's for that seed, tokens/s is shown
        shown = complete(page, {"#prompt": "line 1", "#max-tokens": "25", "#seed": "3"})
        assert shown == engine.generate("line 1", max_new_tokens=25, temperature=0.8, seed=3)
        assert float(page.inner_text("#tps")) > 0 and page.inner_text("#ntokens") == "25"

        # a long one: text streams in, then Stop aborts it and the server frees its lane
        page.fill("#max-tokens", "2000")
        page.click("#generate")
        assert page.inner_text("#generate") == "Stop"
        page.wait_for_function("document.getElementById('completion').textContent.length > 20")
        gate(sched).pause()  # hold decoding so that Stop lands mid-stream
        try:
            streamed = page.inner_text("#completion")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
            assert page.inner_text("#generate") == "Generate"
            wait_for(lambda: sched.jobs() and all(j.cancelled for j in sched.jobs()), what="the job's cancel")
        finally:
            gate(sched).resume()
        wait_for(lambda: sched.stats()["active_rows"] == 0, what="the lane to be freed")
        shown = page.inner_text("#completion")  # char tokens: one character per token
        assert 20 < len(streamed) <= len(shown) < 2000
        assert shown == engine.generate("line 1", max_new_tokens=len(shown), temperature=0.8, seed=3)

        # a bad value is shown as the server's error, naming the field
        page.fill("#temperature", "5")
        page.click("#generate")
        page.wait_for_function("!document.getElementById('error').hidden")
        assert "temperature" in page.inner_text("#error")


def test_playground_chat_mode(small_text_dir, tmp_path_factory, browser_page):
    from chat_util import make_base_run, make_chat_data, make_sft_run

    base = make_base_run(small_text_dir, tmp_path_factory)
    run = make_sft_run(make_chat_data(base, tmp_path_factory), base, tmp_path_factory)
    app = create_app(run, ServeLimits(max_batch=4, max_tokens=200))
    served = app.state.served
    engine = Engine(served.model, served.tokenizer)
    page = browser_page
    with running_server(app) as url:
        page.goto(url)
        page.wait_for_function("!document.getElementById('mode-chat').disabled")
        page.click("#mode-chat")
        assert page.inner_text("#generate") == "Send"
        page.fill("#system", "brief")
        page.fill("#max-tokens", "10")
        page.fill("#seed", "2")
        page.fill("#prompt", "spell fox")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent === 'done'")
        msgs = [{"role": "system", "content": "brief"}, {"role": "user", "content": "spell fox"}]
        first = engine.chat(msgs, max_new_tokens=10, temperature=0.8, seed=2)
        bubbles = page.eval_on_selector_all("#chat-log .msg", "els => els.map(e => [e.className, e.textContent])")
        assert bubbles == [["msg user", "spell fox"], ["msg assistant", first]]
        # the second turn carries the history
        page.fill("#prompt", "again")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#chat-log .msg').length === 4 && "
                               "document.getElementById('status').textContent === 'done'")
        second = engine.chat(msgs + [{"role": "assistant", "content": first}, {"role": "user", "content": "again"}],
                             max_new_tokens=10, temperature=0.8, seed=2)
        assert page.inner_text("#chat-log .msg:nth-child(4)") == second
        page.click("#reset")
        assert page.eval_on_selector_all("#chat-log .msg", "els => els.length") == 0
        # a run without a chat template keeps the Chat mode off
    with running_server(create_app(base, ServeLimits(max_batch=4))) as url:
        page.goto(url)
        page.wait_for_function(f"document.getElementById('model-name').textContent === {base.resolve().name!r}")
        assert page.is_disabled("#mode-chat")


def test_playground_complete_mode_never_shows_special_tokens(browser_page):
    """A chat run's special tokens are never text in the Complete mode either (the page continues text through
    /v1/completions, whose default hides them)."""
    app, _ = special_chain_app(ServeLimits(max_batch=4))
    page = browser_page
    with running_server(app) as url:
        page.goto(url)
        page.wait_for_function("document.getElementById('model-name').textContent === 'chain'")
        assert complete(page, {"#prompt": "a", "#max-tokens": "6", "#temperature": "0"}) == "bab"

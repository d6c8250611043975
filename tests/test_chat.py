"""The chat stage: the template, conversation data and its loss mask, fine-tuning a run on conversations
(the vocabulary grows for the template), chatting through the engine, the terminal and the API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chat_util import BLOCK, make_base_run, make_chat_data, make_sft_run, sft_config, write_jsonl
from scratchgpt import chat
from scratchgpt import checkpoint as ckpt
from scratchgpt.chat_data import ChatLoader
from scratchgpt.cli import main as cli_main
from scratchgpt.config import from_dict
from scratchgpt.errors import UserError
from scratchgpt.generate import Engine
from scratchgpt.models import GPT, GPTConfig
from scratchgpt.repl import run_chat
from scratchgpt.tokenizers import CharTokenizer
from scratchgpt.train import train


@pytest.fixture(scope="module")
def base_run(small_text_dir, tmp_path_factory) -> Path:
    return make_base_run(small_text_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def chat_data(base_run, tmp_path_factory) -> Path:
    return make_chat_data(base_run, tmp_path_factory)


@pytest.fixture(scope="module")
def sft_run(chat_data, base_run, tmp_path_factory) -> Path:
    return make_sft_run(chat_data, base_run, tmp_path_factory)


# ---- the template -------------------------------------------------------------------------------------------

def test_the_template_renders_and_round_trips():
    tok = chat.chat_tokenizer(CharTokenizer.from_text("abc hi?"))
    msgs = chat.parse_messages([{"role": "system", "content": "hi"}, {"role": "user", "content": "abc?"},
                                {"role": "assistant", "content": "cba"}])
    ids, learn = chat.render(tok, msgs)
    assert tok.decode(ids) == ("<|system_start|>hi<|system_end|><|user_start|>abc?<|user_end|>"
                               "<|assistant_start|>cba<|assistant_end|>")
    assert [tok.decode([i]) for i, lr in zip(ids, learn, strict=True) if lr] == ["c", "b", "a", "<|assistant_end|>"]
    assert chat.prompt_ids(tok, msgs[:2]) == ids[:ids.index(tok.special_tokens["<|assistant_start|>"]) + 1]
    # role names typed as text are text, never the template's tokens
    assert tok.special_tokens["<|user_start|>"] not in chat.render(tok, chat.parse_messages(
        [{"role": "user", "content": "abc"}]))[0][1:-1]
    with pytest.raises(UserError, match="not in the tokenizer's vocabulary"):
        tok.encode("<|user_start|>")  # the char tokenizer has no '<' and '|': the name cannot be typed
    assert CharTokenizer.from_json(tok.to_json()).to_json() == tok.to_json()
    assert chat.chat_tokenizer(tok) is tok  # already has it


@pytest.mark.parametrize("messages, fragment", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
    ([{"role": "user"}], "string content"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only the first message"),
    (["x"], "must be an object"),
])
def test_bad_messages_are_one_sentence(messages, fragment):
    with pytest.raises(chat.ChatError, match=None) as e:
        chat.parse_messages(messages)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_byte_level_tokenizers_get_added_special_tokens():
    from scratchgpt.tokenizers.bpe_train import train_bpe

    bpe = train_bpe(["the quick brown fox " * 50], vocab_size=300)
    tok = chat.chat_tokenizer(bpe)
    assert tok.vocab_size == bpe.vocab_size + 6 and tok.eot_token == bpe.eot_token
    assert tok.encode("the fox") == bpe.encode("the fox")  # the old ids keep their meaning
    ids, _ = chat.render(tok, chat.parse_messages([{"role": "user", "content": "the <|user_end|>"}]))
    assert ids.count(tok.special_tokens["<|user_end|>"]) == 1  # typed, the name is plain text
    assert type(tok).from_json(tok.to_json()).to_json() == tok.to_json()
    assert chat.stop_ids(tok) == {tok.special_tokens[s] for s in chat.SPECIALS} | {bpe.eot_token}


# ---- data: the loss mask and batches ---------------------------------------------------------------------------

def test_the_loss_mask_covers_exactly_the_assistant_spans(chat_data, base_run):
    loader = ChatLoader(chat_data, "train", BLOCK, 4, seed=3)
    tok = chat.chat_tokenizer(ckpt.read_tokenizer(base_run))
    x, y = loader.get_batch()
    ids = np.fromfile(chat_data / "train.bin", dtype=np.uint16).astype(int)
    offsets = np.fromfile(chat_data / "train.offsets.bin", dtype=np.int64)
    convs = [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    start, end = tok.special_tokens["<|assistant_start|>"], tok.special_tokens["<|assistant_end|>"]
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        conv = next(c for c in convs if c[:-1] == row_x[:len(c) - 1])  # the conversation this row holds
        want, inside = [], False  # targets are the tokens after an <|assistant_start|>, up to its <|assistant_end|>
        for tok_id in conv[1:]:
            want.append(tok_id if inside else -1)
            inside = tok_id == start or (inside and tok_id != end)
        assert row_y[:len(conv) - 1] == want
        assert all(t == -1 for t in row_y[len(conv) - 1:])  # padding is never a target
        learned = [t for t in row_y if t >= 0]
        assert learned and learned[-1] == end and start not in learned


def test_a_conversation_does_not_depend_on_its_batch_neighbours(chat_data):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=80)).eval()
    x, _ = ChatLoader(chat_data, "train", BLOCK, 6, seed=1).get_batch()
    with torch.no_grad():
        batched = model(x)[0]
        for r in range(x.size(0)):
            alone = model(x[r:r + 1])[0][0]
            assert torch.allclose(batched[r], alone, atol=1e-5)


def test_bad_conversation_files_name_the_line(base_run, tmp_path, capsys):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]})
    cases = {
        "not json": ("{oops", "line 2: not valid JSON"),
        "no messages": (json.dumps({"text": "x"}), "line 2: 'messages' is missing"),
        "unknown role": (json.dumps({"messages": [{"role": "bot", "content": "x"}]}), "line 2[0] has role 'bot'"),
        "empty": (json.dumps({"messages": []}), "line 2 must be a non-empty list"),
        "no reply": (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "line 2 has no assistant"),
        "too long": (json.dumps({"messages": [{"role": "user", "content": "line " * 20},
                                              {"role": "assistant", "content": "x"}]}), "longer than the context"),
    }
    for name, (bad, fragment) in cases.items():
        f = write_jsonl(tmp_path / f"{name.replace(' ', '_')}.jsonl", [good, bad, good])
        code = cli_main(["prepare", "chat", "--input", str(f), "--run", str(base_run), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and fragment in err and "Traceback" not in err, (name, err)
        assert not (tmp_path / "o").exists()


# ---- fine-tuning ------------------------------------------------------------------------------------------------

def test_fine_tuning_grows_the_vocabulary_and_learns_only_the_replies(sft_run, base_run):
    base_model, base_tok, _ = ckpt.load_model(base_run)
    model, tok, cfg = ckpt.load_model(sft_run, which="last")
    assert tok.has_chat_template() and tok.vocab_size == base_tok.vocab_size + 6
    assert cfg.model.vocab_size == base_model.config.vocab_size + 6 and cfg.data.format == "chat"
    assert cfg.model.n_embd == base_model.config.n_embd  # the base run's shape
    rows = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [4, 8]
    assert all(np.isfinite(r["val_loss"]) for r in rows if r["kind"] == "eval")


def test_new_token_rows_start_at_the_mean(base_run, chat_data):
    cfg = sft_config(chat_data, base_run)
    tok = chat.chat_tokenizer(ckpt.read_tokenizer(base_run))
    cfg2, state = ckpt.init_from_run(cfg, tok)
    base = ckpt.load_model(base_run)[0]
    old = base.wte.weight.detach()
    assert torch.equal(state["wte.weight"][: old.size(0)], old)
    assert torch.allclose(state["wte.weight"][old.size(0):], old.mean(0).expand(6, -1))
    assert cfg2.model.vocab_size == old.size(0) + 6


def test_chat_fine_tuning_resumes_exactly(chat_data, base_run, tmp_path):
    straight = train(sft_config(chat_data, base_run, max_iters=6, eval_interval=3), out_dir=tmp_path / "a",
                     progress=False)
    train(sft_config(chat_data, base_run, max_iters=3, eval_interval=3, lr_decay_iters=6), out_dir=tmp_path / "b",
          progress=False)
    cfg = ckpt.read_config(tmp_path / "b", ["--train.max_iters=6"])
    resumed = train(cfg, resume=tmp_path / "b", progress=False)
    assert resumed.step == straight.step == 6
    a, b = ckpt.load_model(tmp_path / "a", "last")[0], ckpt.load_model(tmp_path / "b", "last")[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_chat_data_dir_needs_data_format_chat(chat_data, base_run):
    cfg = from_dict({"data": {"dir": str(chat_data)}, "model": {"init_from": str(base_run)},
                     "train": {"max_iters": 1, "device": "cpu"}})
    with pytest.raises(UserError, match="holds chat data"):
        train(cfg, out_dir=chat_data.parent / "x", progress=False)


# ---- chatting -----------------------------------------------------------------------------------------------------

def test_engine_and_api_answer_through_the_template(sft_run):
    import scratchgpt

    lm = scratchgpt.load(sft_run, dtype="float32")
    msgs = [{"role": "user", "content": "spell fox"}]
    reply = lm.chat(msgs, max_new_tokens=12, temperature=0)
    tok = lm.tokenizer
    ids = chat.prompt_ids(tok, chat.parse_messages(msgs))
    raw = Engine(lm.model).generate_ids([ids], max_new_tokens=12, temperature=0)[0]
    end = tok.special_tokens["<|assistant_end|>"]
    assert reply == tok.decode(raw[:raw.index(end)] if end in raw else raw)  # ends at <|assistant_end|>
    assert lm.chat(msgs, max_new_tokens=12, seed=3) == lm.chat(msgs, max_new_tokens=12, seed=3)


def test_terminal_chat_keeps_history_reset_and_system(sft_run):
    import scratchgpt

    lm = scratchgpt.load(sft_run, dtype="float32")
    lines = iter(["/system be brief", "spell fox", "/temperature 0", "spell dog", "/history", "/reset", "/history",
                  "/quit"])

    def read():
        return next(lines)

    out, err = io.StringIO(), io.StringIO()
    s = lm.settings(max_new_tokens=8, temperature=0)
    run_chat(lm.engine, s, read=read, out=out, err=err)
    shown = err.getvalue()
    assert "system message: 'be brief'" in shown
    history = shown.split("system: be brief\n")
    assert "user: spell fox" in history[1] and "user: spell dog" in history[1]
    assert shown.count("user: spell fox") == 1  # the second /history (after /reset) lists only the system
    assert len(out.getvalue().splitlines()) == 2  # two replies


def test_cli_chat_refuses_a_run_without_template(base_run, capsys):
    assert cli_main(["chat", str(base_run)]) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and "Traceback" not in err


# ---- the API ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_server(sft_run):
    pytest.importorskip("fastapi")
    from scratchgpt.serve import ServeLimits, create_app
    from serve_util import running_server

    app = create_app(sft_run, ServeLimits(max_batch=8, max_tokens=64, max_n=4))
    with running_server(app) as base:
        yield base, app.state.served


def test_the_openai_client_chats_plain_and_streamed(chat_server):
    openai = pytest.importorskip("openai")
    base, served = chat_server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    msgs = [{"role": "system", "content": "brief"}, {"role": "user", "content": "spell fox"}]
    r = client.chat.completions.create(model=served.name, messages=msgs, max_tokens=12, seed=5, temperature=0.9)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    engine = Engine(served.model, served.tokenizer)
    want = engine.chat(msgs, max_new_tokens=12, seed=5, temperature=0.9)
    assert r.choices[0].message.content == want  # the same engine, the same seed, the same reply
    assert r.choices[0].finish_reason in ("stop", "length")
    prompt = len(chat.prompt_ids(served.tokenizer, chat.parse_messages(msgs)))
    assert r.usage.prompt_tokens == prompt
    pieces, roles, reasons, usage = [], [], [], None
    for chunk in client.chat.completions.create(model=served.name, messages=msgs, max_completion_tokens=12, seed=5,
                                                temperature=0.9, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            roles.append(c.delta.role)
            pieces.append(c.delta.content or "")
            reasons.append(c.finish_reason)
        usage = chunk.usage or usage
    assert "".join(pieces) == want and roles[0] == "assistant"  # streamed equals whole for the seed
    assert [x for x in reasons if x] == [r.choices[0].finish_reason] and usage.prompt_tokens == prompt
    n = client.chat.completions.create(model=served.name, messages=msgs, max_tokens=6, n=3, seed=1)
    assert [c.index for c in n.choices] == [0, 1, 2]
    assert [c.message.content for c in n.choices] == engine.chat(msgs, max_new_tokens=6, seed=1, num_samples=3)
    parts = client.chat.completions.create(model=served.name, max_tokens=6, seed=1, messages=[
        {"role": "system", "content": "brief"}, {"role": "user", "content": [{"type": "text", "text": "spell fox"}]}])
    plain = client.chat.completions.create(model=served.name, max_tokens=6, seed=1, messages=msgs)
    assert parts.choices[0].message.content == plain.choices[0].message.content  # text parts: the same message


@pytest.mark.parametrize("body, fragment", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role 'wizard'"),
    ({"messages": [{"role": "user", "content": "line " * 20}]}, "context length"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "needs 'logprobs': true"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "\u4e2d"}]}, "not in the tokenizer"),
])
def test_bad_chat_requests_are_a_400(chat_server, body, fragment):
    import httpx

    r = httpx.post(f"{chat_server[0]}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text


def test_a_run_without_a_chat_template_is_a_400(base_run):
    pytest.importorskip("fastapi")
    import httpx

    from scratchgpt.serve import create_app
    from serve_util import running_server

    with running_server(create_app(base_run)) as base:
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "messages"


def test_the_gpt2_recipe_fine_tunes_an_imported_gpt2_offline(tmp_path, capsys):
    """configs/chat/gpt2_sft.toml on a random GPT-2-shaped stand-in (GPT-2's real files need a download):
    import-hf, prepare chat, train with the recipe, chat. GPT-2's tokenizer gets the template's tokens."""
    transformers = pytest.importorskip("transformers")
    from scratchgpt.interop.hf_tokenizer import ranks_to_hf
    from scratchgpt.tokenizers.bpe_train import train_bpe

    text = "spell the word fox, then say it again. " * 40
    bpe = train_bpe([text], 300, pattern="gpt2", special_tokens=[])
    vocab, merges = ranks_to_hf({t: i for i, t in enumerate(bpe.vocab)}, {"<|endoftext|>": len(bpe.vocab)})
    src = tmp_path / "gpt2"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=len(vocab))
    transformers.GPT2LMHeadModel(cfg).save_pretrained(src, safe_serialization=True)
    (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    run = tmp_path / "runs" / "gpt2"
    assert cli_main(["import-hf", str(src), "--out", str(run)]) == 0
    assert not (run / "tokenizer.json").is_file()  # a stand-in vocabulary is not GPT-2's own: give it the run
    from scratchgpt.tokenizers.gpt2 import load_gpt2

    (run / "tokenizer.json").write_text(json.dumps(load_gpt2(src / "vocab.json").to_json()), encoding="utf-8")
    rows = [{"messages": [{"role": "user", "content": "spell fox"}, {"role": "assistant", "content": "f o x"}]}] * 12
    conv = write_jsonl(tmp_path / "mine.jsonl", rows)
    data = tmp_path / "data" / "my_chat"
    assert cli_main(["prepare", "chat", "--input", str(conv), "--run", str(run), "--out", str(data)]) == 0
    recipe = Path(__file__).resolve().parents[1] / "configs" / "chat" / "gpt2_sft.toml"
    out = tmp_path / "runs" / "gpt2_sft"
    assert cli_main(["train", str(recipe), "--out", str(out), "--quiet", f"--data.dir={data}",
                     f"--model.init_from={run}", "--train.max_iters=4", "--train.eval_interval=2",
                     "--train.eval_iters=1", "--train.batch_size=2", "--train.grad_accum_steps=1",
                     "--train.device=cpu"]) == 0
    tok = ckpt.read_tokenizer(out)
    assert tok.kind == "gpt2" and tok.has_chat_template()
    assert tok.special_tokens["<|system_start|>"] == len(vocab)  # right after <|endoftext|>
    assert ckpt.read_config(out).model.block_size == 64  # the imported model's context
    import scratchgpt

    reply = scratchgpt.load(out, dtype="float32").chat([{"role": "user", "content": "spell fox"}], max_new_tokens=5,
                                                       temperature=0)
    assert isinstance(reply, str) and "<|" not in reply
    capsys.readouterr()


def test_export_keeps_the_template_tokens(sft_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    assert cli_main(["export", str(sft_run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    ours = ckpt.read_tokenizer(sft_run)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids, _ = chat.render(ours, chat.parse_messages([{"role": "user", "content": "spell fox"},
                                                    {"role": "assistant", "content": "f o x"}]))
    assert len(theirs) == ours.vocab_size and theirs.decode(ids) == ours.decode(ids)
    assert theirs.encode(ours.decode(ids)) == ids  # the template's tokens keep their ids
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf_model.config.vocab_size == ckpt.read_config(sft_run).model.vocab_size


# ---- chat at its edges: a conversation longer than the context, log-probabilities -------------------------------

LONG = [{"role": "system", "content": "brief"}] + [
    m for w in ("fox", "dog", "over") for m in ({"role": "user", "content": f"spell {w}"},
                                               {"role": "assistant", "content": " ".join(w)})
] + [{"role": "user", "content": "spell lazy"}]  # 73 tokens with the template: more than the context of 48


def test_a_long_conversation_drops_its_oldest_turns_and_keeps_the_system_message(sft_run):
    import scratchgpt

    tok = ckpt.read_tokenizer(sft_run)
    msgs = chat.parse_messages(LONG)
    assert len(chat.prompt_ids(tok, msgs)) > BLOCK
    fitted = chat.fit_conversation(tok, msgs, BLOCK, room=12)
    assert fitted.messages[0] == msgs[0] and fitted.messages[1:] == msgs[-len(fitted.messages) + 1:]
    assert fitted.messages[1].role == "user" and fitted.dropped % 2 == 0 and fitted.dropped > 0  # whole turns
    assert len(fitted.ids) + 12 <= BLOCK and fitted.ids == chat.prompt_ids(tok, fitted.messages)
    bigger = chat.fit_conversation(tok, msgs, BLOCK, room=0)  # less room for the reply: more turns kept
    assert bigger.dropped < fitted.dropped and len(bigger.ids) <= BLOCK
    last = chat.fit_conversation(tok, msgs, BLOCK, room=BLOCK)  # never the last user message's turn
    assert last.messages == [msgs[0], msgs[-1]]
    with pytest.raises(chat.ConversationTooLong) as e:
        chat.fit_conversation(tok, chat.parse_messages([*LONG[:1], {"role": "user", "content": "spell " * 10}]), BLOCK)
    assert str(e.value) == ("this model's context length is 48 tokens, but the last user message alone takes 70 "
                            "(with the system message and the reply's opening token); shorten it")
    # the engine (the Python API, `scratchgpt chat`) fits the conversation the same way
    lm = scratchgpt.load(sft_run, dtype="float32")
    assert lm.engine.fit_chat(LONG, lm.settings(max_new_tokens=12)) == fitted
    assert lm.chat(LONG, max_new_tokens=12, seed=2) == lm.chat(fitted.messages, max_new_tokens=12, seed=2)


def test_the_server_drops_old_turns_and_says_so(chat_server):
    openai = pytest.importorskip("openai")
    base, served = chat_server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model=served.name, messages=LONG, max_tokens=12, seed=3)
    fitted = chat.fit_conversation(served.tokenizer, chat.parse_messages(LONG), BLOCK, chat.reply_room(12, BLOCK))
    assert raw.headers["x-dropped-messages"] == str(fitted.dropped)
    r = raw.parse()
    assert r.usage.prompt_tokens == len(fitted.ids)
    assert r.choices[0].message.content == Engine(served.model, served.tokenizer).chat(fitted.messages,
                                                                                       max_new_tokens=12, seed=3)
    short = client.chat.completions.with_raw_response.create(model=served.name, messages=LONG[-1:], max_tokens=4)
    assert "x-dropped-messages" not in short.headers  # nothing left out, nothing said


def test_terminal_chat_notes_when_old_turns_are_left_out(sft_run):
    import scratchgpt

    lm = scratchgpt.load(sft_run, dtype="float32")
    lines = iter(["/system brief", "spell fox", "spell dog", "spell over", "spell lazy", "/quit"])
    out, err = io.StringIO(), io.StringIO()
    run_chat(lm.engine, lm.settings(max_new_tokens=12, temperature=0), read=lambda: next(lines), out=out, err=err)
    notes = [line for line in err.getvalue().splitlines() if line.startswith("note:")]
    assert notes and "older ones left out, the system message kept" in notes[-1]
    assert len(out.getvalue().splitlines()) == 4  # every turn answered


def test_chat_logprobs_in_openais_shape_whole_and_streamed(chat_server):
    openai = pytest.importorskip("openai")
    base, served = chat_server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "spell fox"}]
    kw = dict(model=served.name, messages=msgs, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content and content
    ids = chat.prompt_ids(served.tokenizer, chat.parse_messages(msgs))
    # decoding attends in float32 on a CPU (its cache's dtype), the uncached forward in the weights' dtype: the
    # same numbers in float32, the same to bf16's rounding of the logits in bf16
    tol = 1e-5 if next(served.model.parameters()).dtype == torch.float32 else 0.02
    for e in content:  # greedy: each token is the most likely one, with the forward's log-probability
        with torch.no_grad():
            logp = torch.log_softmax(served.model(torch.tensor([ids]))[0][0, -1].float(), dim=-1)
        assert e.logprob == pytest.approx(logp.max().item(), abs=tol) and e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(logp.topk(3).values.tolist(), abs=tol)
        ids.append(int(logp.argmax()))
    streamed = [e for chunk in client.chat.completions.create(**kw, stream=True) for c in chunk.choices
                if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = client.chat.completions.create(model=served.name, messages=msgs, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == r.choices[0].message.content

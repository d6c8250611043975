"""`scratchgpt eval`: the sliding window against a hand-written definition, agreement with the training run's
full-split val loss, bits per byte by hand and across tokenizers, multiple choice, and bad input as one line."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchgpt
from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.config import Config, DataConfig, ModelConfig
from scratchgpt.data import prepare_text
from scratchgpt.evaluate import first_token_bytes, read_choices, score_choices, score_tokens, windows
from scratchgpt.models import build_model
from scratchgpt.tokenizers import CharTokenizer, WordTokenizer
from scratchgpt.train import train

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzé"


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


def _eval_json(capsys, *argv) -> dict:
    """eval's report in float32: these tests check windows and figures against fp32 references (the policy's
    other dtypes are checked in their own tests)."""
    rc, out, _ = _run_cli(capsys, "eval", *argv, "--json", "--quiet", "--device", "cpu", "--dtype", "float32")
    assert rc == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    """A char run with random weights (block 8): scoring does not need a trained model to be checked."""
    run = tmp_path_factory.mktemp("eval_run")
    m = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=len(CHARS), init_std=0.3)
    torch.manual_seed(0)
    model = build_model(m)
    ckpt.write_run_header(run, Config(name="e", data=DataConfig(dir=""), model=m), CharTokenizer(CHARS),
                          model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=1)
    return run


def _by_hand(model, ids: list[int], block: int, stride: int) -> list[float]:
    """ln p of each token after the first, one forward pass per token, with exactly the context the definition
    gives it: token i is predicted from tokens [kS, i), k the first window (k = 0, 1, ...) reaching it."""
    out = []
    for i in range(1, len(ids)):
        k = max(0, math.ceil((i - block) / stride))
        context = torch.tensor([ids[k * stride:i]])
        assert 1 <= context.size(1) <= block
        logits, _ = model(context)
        out.append(float(logits[0, -1].double().log_softmax(-1)[ids[i]]))
    return out


# ---- the window ------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300), st.integers(1, 40), st.data())
def test_windows_score_every_prediction_once(n, block, data):
    stride = data.draw(st.integers(1, block))
    wins = windows(n, block, stride)
    scored = [t for start, length, k in wins for t in range(start + length - k + 1, start + length + 1)]
    assert scored == list(range(1, n))  # predictions t_1 .. t_{n-1}, each once, in order
    for j, (start, length, k) in enumerate(wins):
        assert start == j * stride and 1 <= k <= length <= block and start + length <= n - 1
        if j:  # a later window's first scored prediction sees B - S + 1 tokens (its context and itself)
            assert length - k == block - stride
    assert wins[0][2] == wins[0][1]  # the first window scores all its predictions


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@torch.no_grad()
def test_sliding_window_matches_the_definition_token_by_token(pos_emb):
    torch.manual_seed(1)
    m = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, pos_emb=pos_emb, init_std=0.3)
    model = build_model(m).eval()
    ids = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(2)).tolist()
    for stride in (1, 3, 8):
        expected = _by_hand(model, ids, 8, stride)
        for batch_size in (1, 4, 64):  # batching windows does not change a single figure
            got = score_tokens(model, ids, 8, stride, batch_size)
            assert got.dtype == np.float32 and len(got) == len(ids) - 1
            np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_stride_above_the_block_is_refused(random_run, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("ABCDEFGHIJ abcdefghij", encoding="utf-8")
    rc, _, err = _run_cli(capsys, "eval", random_run, "--text", tmp_path / "t.txt", "--stride", "9", "--quiet")
    assert rc == 2 and "block size 8" in err and err.count("\n") == 1


# ---- agreement with training ---------------------------------------------------------------------------

def test_eval_agrees_with_the_training_full_val_loss(shakespeare_dir, tmp_path, capsys):
    """stride = block: the windows of the trainer's full-split val loss, so the same mean loss to float error.
    The trainer drops the split's last partial window; cut there, the texts are the same tokens."""
    cfg = tiny_config(shakespeare_dir, max_iters=20, eval_interval=20, full_val=True, batch_size=32)
    result = train(cfg, out_dir=tmp_path / "run", progress=False)
    val_loss = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["kind"] == "eval"][-1]["val_loss"]
    tok = ckpt.read_tokenizer(result.run_dir)
    val_ids = np.fromfile(shakespeare_dir / "val.bin", dtype=np.uint16).tolist()
    block = cfg.model.block_size
    kept = (len(val_ids) - 1) // block * block  # the predictions BatchLoader.sequential makes
    assert kept < len(val_ids) - 1  # the split really has a partial window at its end
    (tmp_path / "val.txt").write_text(tok.decode(val_ids[:kept + 1]), encoding="utf-8")
    report = _eval_json(capsys, result.run_dir, "--which", "last", "--text", tmp_path / "val.txt", "--batch-size", "128")
    row = report["texts"][0]
    assert report["stride"] == block and row["scored_tokens"] == kept
    assert abs(row["loss"] - val_loss) < 1e-6
    assert row["perplexity"] == pytest.approx(math.exp(val_loss), rel=1e-5)
    # the whole split through the API: the same first `kept` predictions, and the last partial window too
    whole = scratchgpt.load(result.run_dir, which="last", dtype="float32").score(tok.decode(val_ids), batch_size=256)
    assert whole.tokens == val_ids and whole.scored_tokens == len(val_ids) - 1
    assert abs(-whole.token_logprobs[:kept].astype(np.float64).mean() - val_loss) < 1e-6
    # a smaller stride: every token after the first window is scored with at least block - stride of context
    small = _eval_json(capsys, result.run_dir, "--which", "last", "--text", tmp_path / "val.txt", "--stride", "4",
                       "--batch-size", "512")
    assert small["texts"][0]["scored_tokens"] == kept and small["stride"] == 4


# ---- bits per byte ---------------------------------------------------------------------------------------

def test_bits_per_byte_by_hand(random_run, tmp_path, capsys):
    text = "é tu, Brute? ABC é\né"  # 20 characters, 23 bytes; the first (unscored) token is 2 bytes
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    model, tok, _ = ckpt.load_model(random_run)
    with torch.no_grad():
        lp = _by_hand(model, tok.encode(text), 8, 8)
    nats = -sum(lp)
    row = _eval_json(capsys, random_run, "--text", tmp_path / "t.txt")["texts"][0]
    assert (row["tokens"], row["scored_tokens"], row["scored_bytes"]) == (20, 19, 21)
    assert row["loss"] == pytest.approx(nats / 19, rel=1e-6)
    assert row["bits_per_byte"] == pytest.approx(nats / math.log(2) / 21, rel=1e-6)
    score = scratchgpt.load(random_run, dtype="float32").score(text)  # the API: the same numbers, token by token
    np.testing.assert_allclose(score.token_logprobs, lp, atol=2e-6)
    assert score.bits_per_byte == pytest.approx(row["bits_per_byte"], rel=1e-6)


def test_several_texts_and_their_total(random_run, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("To be, or not to be: that is the question.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Ay, there's the rub;\nfor in that sleep", encoding="utf-8")
    report = _eval_json(capsys, random_run, "--text", tmp_path / "a.txt", tmp_path / "b.txt", "--batch-size", "2")
    a, b = report["texts"]
    total = report["total"]
    nats = a["loss"] * a["scored_tokens"] + b["loss"] * b["scored_tokens"]
    assert total["scored_tokens"] == a["scored_tokens"] + b["scored_tokens"]
    assert total["loss"] == pytest.approx(nats / total["scored_tokens"], rel=1e-9)
    assert total["bits_per_byte"] == pytest.approx(nats / math.log(2) / (a["scored_bytes"] + b["scored_bytes"]))
    rc, out, _ = _run_cli(capsys, "eval", random_run, "--text", tmp_path / "a.txt", tmp_path / "b.txt", "--quiet")
    assert rc == 0 and "bits/byte" in out and "total" in out and str(tmp_path / "b.txt") in out


def test_first_token_bytes_of_an_unknown_word():
    tok = WordTokenizer([" the", " fox", "."])
    text = "Zebras the fox."
    ids = tok.encode_array(text)
    assert ids[0] == 0 and first_token_bytes(tok, ids, text) == len("Zebras")
    assert first_token_bytes(CharTokenizer("éa"), CharTokenizer("éa").encode_array("éa"), "éa") == 2


LINES = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))
QUESTIONS = [
    {"context": "line 7: the quick brown fox jumps over the lazy", "choices": [" dog.", " cat.", " fox."], "label": 0},
    {"context": "line 12: the quick brown", "choices": [" cow", " fox", " dog"], "label": 1},
    {"context": "line 3: the quick ", "choices": ["red", "blue", "brown"], "label": 2},
    {"context": "line 30: the quick brown fox jumps", "choices": [" over", " under"], "label": 0},
    {"context": "line 5: the quick brown fox jumps over the", "choices": [" lazy dog.", " dog."], "label": 0},
]


@pytest.fixture(scope="module")
def pattern_runs(tmp_path_factory) -> dict[str, Path]:
    """Models trained 200 steps on a repetitive text, one per tokenizer (char, our byte-level BPE)."""
    d = tmp_path_factory.mktemp("pattern")
    (d / "input.txt").write_text(LINES, encoding="utf-8")
    runs = {}
    for kind in ("char", "bpe"):
        prepare_text(d / "input.txt", d / kind, tokenizer=kind, vocab_size=300)
        cfg = tiny_config(d / kind, max_iters=200, learning_rate=1e-2, eval_interval=1000)
        runs[kind] = train(replace(cfg, model=replace(cfg.model, dropout=0.0)), out_dir=d / f"run_{kind}",
                           progress=False).run_dir
    (d / "q.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n\n", encoding="utf-8")
    (d / "tail.txt").write_text(LINES[-3000:], encoding="utf-8")
    return runs


def test_bits_per_byte_compare_char_and_bpe(pattern_runs, capsys):
    """Per token, a BPE model's loss covers ~3.4 characters and a char model's one; per byte both are on the
    same scale, and each is far below a uniform guess over its own vocabulary."""
    text = pattern_runs["char"].parent / "tail.txt"
    rows = {kind: _eval_json(capsys, run, "--text", text)["texts"][0] for kind, run in pattern_runs.items()}
    for kind, row in rows.items():
        vocab = ckpt.read_tokenizer(pattern_runs[kind]).vocab_size
        uniform = math.log2(vocab) * row["scored_tokens"] / row["scored_bytes"]
        assert row["bits_per_byte"] < uniform / 3
    assert rows["bpe"]["scored_bytes"] == rows["char"]["scored_bytes"] - 3  # "lin" is BPE's first token
    assert rows["char"]["scored_tokens"] > 3 * rows["bpe"]["scored_tokens"]
    assert 1 / 5 < rows["bpe"]["bits_per_byte"] / rows["char"]["bits_per_byte"] < 5


# ---- multiple choice -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_multiple_choice_on_a_known_pattern(pattern_runs, kind, capsys):
    run = pattern_runs[kind]
    qfile = run.parent / "q.jsonl"
    report = _eval_json(capsys, run, "--choices", qfile)
    assert report["choices"] == {"file": str(qfile), "questions": 5, "accuracy": 1.0, "acc_norm": 1.0}
    wrong = run.parent / f"wrong_{kind}.jsonl"  # every label moved off the pattern's continuation
    wrong.write_text("\n".join(json.dumps({**q, "label": (q["label"] + 1) % len(q["choices"])}) for q in QUESTIONS))
    assert _eval_json(capsys, run, "--choices", wrong)["choices"]["accuracy"] == 0.0


def test_choice_sums_are_the_continuations_logprobs(pattern_runs):
    model, tok, cfg = ckpt.load_model(pattern_runs["bpe"])
    questions = read_choices(pattern_runs["bpe"].parent / "q.jsonl")
    got = score_choices(model, tok, questions, cfg.model.block_size, batch_size=3).logprobs
    for q, sums in zip(questions, got, strict=True):
        context = q.context.rstrip()
        for choice, value in zip(q.choices, sums, strict=True):
            ctx, whole = tok.encode(context), tok.encode(q.context + choice)
            assert whole[:len(ctx)] == ctx  # these contexts end on a token boundary
            lp = score_tokens(model, whole[-(cfg.model.block_size + 1):], cfg.model.block_size)
            assert value == pytest.approx(float(lp[-(len(whole) - len(ctx)):].sum()), abs=1e-4)


# ---- bad input -------------------------------------------------------------------------------------------

def _bad_choices(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


GOOD = json.dumps({"context": "AB", "choices": ["C", "D"], "label": 0})


@pytest.mark.parametrize("line,words", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected an object"),
    (json.dumps({"choices": ["a"], "label": 0}), "'context' is missing"),
    (json.dumps({"context": 3, "choices": ["a"], "label": 0}), "'context' must be a string"),
    (json.dumps({"context": "a", "choices": [], "label": 0}), "non-empty list"),
    (json.dumps({"context": "a", "choices": "ab", "label": 0}), "non-empty list"),
    (json.dumps({"context": "a", "choices": ["b", ""], "label": 0}), "'choices[1]' must be a non-empty string"),
    (json.dumps({"context": "a", "choices": ["b"], "label": "0"}), "'label' must be a whole number"),
    (json.dumps({"context": "a", "choices": ["b"], "label": True}), "'label' must be a whole number"),
    (json.dumps({"context": "a", "choices": ["b", "c"], "label": 2}), "not the index of one of its 2 choices"),
    (json.dumps({"context": "a", "choices": ["b\u00fc"], "label": 0}), "'\u00fc' (U+00FC)"),
    (json.dumps({"context": "a", "choices": ["b" * 9], "label": 0}), "more than the model's block of 8"),
    (json.dumps({"context": "", "choices": ["b"], "label": 0}), "context has no tokens"),
])
def test_a_bad_choices_line_is_one_error_naming_it(random_run, tmp_path, capsys, line, words):
    path = _bad_choices(tmp_path, [GOOD, "", line])
    rc, out, err = _run_cli(capsys, "eval", random_run, "--choices", path, "--quiet")
    assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert f"'{path}' line 3" in err and words in err


def test_bad_texts_and_runs_are_one_error_each(random_run, tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "unknown.txt").write_text("ABC\u00fcD", encoding="utf-8")
    (tmp_path / "one.txt").write_text("A", encoding="utf-8")
    (tmp_path / "ok.txt").write_text("ABCD", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    cases = [
        (["--text", tmp_path / "empty.txt"], "is empty"),
        (["--text", tmp_path / "missing.txt"], "not found"),
        (["--text", tmp_path / "latin1.txt"], "not UTF-8"),
        (["--text", tmp_path / "ok.txt", tmp_path / "unknown.txt"], "'\u00fc' (U+00FC) at position 3"),
        (["--text", tmp_path / "one.txt"], "at least two"),
        (["--choices", tmp_path / "blank.jsonl"], "holds no questions"),
        ([], "needs --text"),
    ]
    for args, words in cases:
        rc, out, err = _run_cli(capsys, "eval", random_run, *args, "--quiet")
        assert rc == 2 and out == "" and words in err and err.startswith("error: ") and err.count("\n") == 1, args
    rc, _, err = _run_cli(capsys, "eval", tmp_path, "--text", tmp_path / "ok.txt")
    assert rc == 2 and "not a run directory" in err
    rc, _, err = _run_cli(capsys, "eval", random_run, "--text", tmp_path / "ok.txt", "--stride", "0")
    assert rc == 2 and "--stride" in err

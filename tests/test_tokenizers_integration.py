"""Tokenizers in the pipeline: GPT-2 from a local file and offline, SentencePiece, `tokenizer compare`, and every
kind through prepare -> train -> sample with the tokenizer saved in the run directory. No network: GPT-2's real
file is never fetched; a small encoding in GPT-2's own file formats stands in for it.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.data import load_meta, prepare_text
from scratchgpt.errors import UserError
from scratchgpt.tokenizers import GPT2Tokenizer, tokenizer_from_json
from scratchgpt.tokenizers.bpe_train import train_bpe_files
from scratchgpt.tokenizers.compare import compare_tokenizers, format_table
from scratchgpt.tokenizers.gpt2 import GPT2_ENV, _byte_decoder, load_gpt2
from scratchgpt.train import train

TEXT = "".join(f"{who}:\nthe quick brown fox {i} jumps over the lazy dog; café, 日本 🙂.\n\n"
               for i, who in enumerate(["ROMEO", "JULIET", "NURSE"] * 60))
MERGES = [b" t", b"he", b" the", b"qu", b"ic", b"ick", b" qu"]


def gpt2_files(d: Path) -> Path:
    """encoder.json and gpt2.tiktoken for a small encoding laid out as GPT-2's: bytes in GPT-2's order first."""
    d.mkdir(parents=True, exist_ok=True)
    to_char = {b: c for c, b in _byte_decoder().items()}
    order = list(_byte_decoder().values())  # GPT-2's byte order: printable bytes, then the rest
    tokens = [bytes([b]) for b in order] + MERGES
    encoder = {"".join(to_char[b] for b in t): i for i, t in enumerate(tokens)}
    encoder["<|endoftext|>"] = len(tokens)
    (d / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (d / "gpt2.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return d


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No local GPT-2 anywhere and a tiktoken that cannot download."""
    def no_network(url):
        raise ConnectionError(f"no network for {url}")

    monkeypatch.delenv(GPT2_ENV, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})


# ---- GPT-2 ---------------------------------------------------------------------------------------------

def test_gpt2_offline_is_one_sentence_naming_what_to_set(offline):
    with pytest.raises(UserError) as e:
        load_gpt2()
    msg = str(e.value)
    assert GPT2_ENV in msg and "TIKTOKEN_CACHE_DIR" in msg and "\n" not in msg


def test_gpt2_offline_cli_prepare_exits_2_and_writes_nothing(offline, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    code = main(["prepare", "text", "--input", str(tmp_path / "a.txt"), "--tokenizer", "gpt2",
                 "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and GPT2_ENV in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["encoder.json", "gpt2.tiktoken", "."])
def test_gpt2_from_local_files(tmp_path, monkeypatch, offline, name):
    d = gpt2_files(tmp_path / "gpt2")
    monkeypatch.setenv(GPT2_ENV, str(d / name))
    tok = load_gpt2()
    assert tok.vocab_size == 256 + len(MERGES) + 1 and tok.eot_id == tok.vocab_size - 1
    assert tok.encode("!") == [0]  # GPT-2's id 0 is "!"
    assert tok.encode(" the quick") == [tok._enc.encode_single_token(b" the"), tok._enc.encode_single_token(b" qu"),
                                        tok._enc.encode_single_token(b"ick")]
    for s in [TEXT, "", "  \n\tx 123 🙂", "<|endoftext|>"]:
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode("<|endoftext|>", allowed_special="all") == [tok.eot_id]


def test_gpt2_json_records_the_file_and_checks_its_size(tmp_path, monkeypatch, offline):
    d = gpt2_files(tmp_path / "gpt2")
    tok = load_gpt2(d)
    obj = json.loads(json.dumps(tok.to_json()))
    assert obj == {"kind": "gpt2", "n_vocab": tok.vocab_size, "source": str((d / "gpt2.tiktoken").resolve())}
    back = tokenizer_from_json(obj)  # found again through the recorded path, with no variable set
    assert isinstance(back, GPT2Tokenizer) and back.encode(TEXT) == tok.encode(TEXT)
    with pytest.raises(UserError, match="tokens but this run was made with"):
        tokenizer_from_json({**obj, "n_vocab": 50257})
    with pytest.raises(UserError, match=GPT2_ENV):  # recorded file gone, nothing set, offline
        tokenizer_from_json({**obj, "source": str(tmp_path / "moved")})


def test_real_gpt2_ids_when_a_local_copy_is_given():
    """Runs where $SCRATCHGPT_TIKTOKEN_GPT2 points at OpenAI's own GPT-2 encoder.json (nothing is downloaded)."""
    if not os.environ.get(GPT2_ENV):
        pytest.skip(f"set {GPT2_ENV} to OpenAI's GPT-2 encoder.json to check the real ids")
    tok = load_gpt2()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995] and tok.encode(" the") == [262] and tok.encode("!") == [0]
    assert tok.decode(tok.encode(TEXT)) == TEXT


@pytest.mark.parametrize("content", ["not json at all {", '{"a": "b"}', "bm90IGEgcmFuaw== x\n"])
def test_gpt2_bad_local_file_is_a_user_error(tmp_path, monkeypatch, content):
    f = tmp_path / ("encoder.json" if content.startswith(("{", "n")) else "gpt2.tiktoken")
    f.write_text(content)
    monkeypatch.setenv(GPT2_ENV, str(f))
    with pytest.raises(UserError, match="is not a GPT-2 encoding"):
        load_gpt2()


def test_gpt2_folder_without_files(tmp_path, monkeypatch):
    monkeypatch.setenv(GPT2_ENV, str(tmp_path))
    with pytest.raises(UserError, match="holds none of"):
        load_gpt2()


# ---- SentencePiece -------------------------------------------------------------------------------------------

def test_sentencepiece_round_trip_json_and_small_vocab():
    pytest.importorskip("sentencepiece")
    from scratchgpt.tokenizers import SentencePieceTokenizer

    tok = SentencePieceTokenizer.train([TEXT], 400)
    assert tok.vocab_size <= 400
    for s in [TEXT, "unseen ✓ characters ë\n\n  x", ""]:
        assert tok.decode(tok.encode(s)) == s
    back = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert back.encode(TEXT) == tok.encode(TEXT) and back.encode_array(TEXT).tolist() == tok.encode(TEXT)
    with pytest.raises(UserError, match="SentencePiece could not train"):
        SentencePieceTokenizer.train([TEXT], 50)
    with pytest.raises(UserError):
        tokenizer_from_json({"kind": "spm", "model": base64.b64encode(b"garbage").decode()})


# ---- compare ----------------------------------------------------------------------------------------------------

def test_compare_measures_the_trade_off(offline, tmp_path, capsys):
    pytest.importorskip("sentencepiece")
    rng = random.Random(0)  # many distinct words from few letters: a word vocabulary outgrows a BPE's
    words = ["".join(rng.choice("etaoinshr") for _ in range(rng.randint(2, 7))) for _ in range(4000)]
    text = "".join(w + rng.choice([" ", " ", " ", ", ", ".\n"]) for w in words)
    rows = compare_tokenizers(text, 400)
    by = {r.name.split()[0]: r for r in rows}
    assert list(by) == ["char", "word", "bpe", "sentencepiece", "gpt2"]
    assert by["char"].tokens == len(text) and by["char"].chars_per_token == 1
    assert by["bpe"].vocab_size == 400 and all(by[k].round_trip for k in ["char", "word", "bpe", "sentencepiece"])
    # the trade-off: a bigger vocabulary, a shorter sequence
    assert by["word"].vocab_size > by["bpe"].vocab_size > by["char"].vocab_size
    assert by["word"].tokens < by["bpe"].tokens < by["char"].tokens
    assert by["gpt2"].tokens is None and GPT2_ENV in by["gpt2"].note
    table = format_table(rows, len(text))
    assert "chars/token" in table and GPT2_ENV in table
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    assert main(["tokenizer", "compare", "--input", str(tmp_path / "a.txt"), "--vocab-size", "400"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split() == ["tokenizer", "vocab", "tokens", "chars/token", "round", "trip"]


# ---- prepare, train, sample ---------------------------------------------------------------------------------------

def decoded_splits(data: Path) -> str:
    meta = load_meta(data)
    tok = tokenizer_from_json(meta["tokenizer"])
    ids = np.concatenate([np.fromfile(data / f"{s}.bin", dtype=np.dtype(meta["dtype"])) for s in ("train", "val")])
    return tok.decode(ids.tolist())


@pytest.fixture
def corpus(tmp_path) -> Path:
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path / "input.txt"


@pytest.mark.parametrize("kind, vocab", [("char", None), ("word", None), ("bpe", 300), ("spm", 400)])
def test_prepare_learns_each_kind_from_the_text(corpus, tmp_path, kind, vocab):
    if kind == "spm":
        pytest.importorskip("sentencepiece")
    meta = prepare_text(corpus, tmp_path / "data", tokenizer=kind, vocab_size=vocab)
    assert meta["tokenizer"]["kind"] == kind and meta["dtype"] == "uint16"
    if vocab:
        assert meta["vocab_size"] <= vocab
    assert decoded_splits(tmp_path / "data") == TEXT


def test_prepare_uses_uint32_past_65536_tokens(tmp_path):
    text = " ".join(f"w{i}" for i in range(70_000))
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    meta = prepare_text(tmp_path / "big.txt", tmp_path / "data", tokenizer="word")
    assert meta["vocab_size"] > 65536 and meta["dtype"] == "uint32"
    assert decoded_splits(tmp_path / "data") == text


def make_tokenizer_spec(kind: str, tmp_path: Path, corpus: Path, monkeypatch) -> str:
    if kind == "bpe-dir":
        train_bpe_files([corpus], 300, tmp_path / "tok")
        return str(tmp_path / "tok")
    if kind == "gpt2":
        monkeypatch.setenv(GPT2_ENV, str(gpt2_files(tmp_path / "gpt2")))
    if kind == "spm":
        pytest.importorskip("sentencepiece")
    return kind


@pytest.mark.parametrize("kind", ["bpe-dir", "word", "spm", "gpt2"])
def test_prepare_train_sample_with_each_tokenizer(kind, corpus, tmp_path, monkeypatch, offline, capsys):
    spec = make_tokenizer_spec(kind, tmp_path, corpus, monkeypatch)
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "text", "--input", str(corpus), "--tokenizer", spec, "--out", str(data),
                 "--vocab-size", "400"]) == 0
    meta = load_meta(data)
    train(tiny_config(data, max_iters=4, eval_interval=4), out_dir=run, progress=False)
    saved = json.loads((run / ckpt.TOKENIZER).read_text())
    assert saved == meta["tokenizer"] and saved["kind"] == kind.removesuffix("-dir")
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:")
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3"]) == 0
    assert capsys.readouterr().out == out  # the same seed, the same text: the saved tokenizer decodes alike

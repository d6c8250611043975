"""Tokenizers: our byte-level BPE (training against a naive reference, tiktoken against our reference encoder
on arbitrary Unicode, round trips, JSON), the pinned split patterns, word, SentencePiece, GPT-2 from local
files and offline, compare, and the bad inputs of `scratchgpt tokenizer` (one line, exit 2, nothing written).
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from itertools import pairwise

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchgpt.cli import main
from scratchgpt.errors import CheckpointError, UserError
from scratchgpt.tokenizers import BPETokenizer, WordTokenizer, load_tokenizer_dir, tokenizer_from_json
from scratchgpt.tokenizers.bpe_train import count_chunks, train_bpe, train_bpe_files
from scratchgpt.tokenizers.pretokenize import SPLIT_PATTERNS, compile_pattern

EOT = "<|endoftext|>"
CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "You are all resolved rather to die than to famish? I'll say it's 1234567 o'clock, THEY'RE here.\n"
    "Ünïcödé: café naïve résumé, 日本語のテキスト, Ελληνικά, русский текст, emoji 🙂🙂 ok\t\ttabs  and   spaces\r\n"
    f"{EOT}second document{EOT}\n"
) * 20
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_bpe([CORPUS], 400)


@pytest.fixture(scope="module")
def bpe_gpt2() -> BPETokenizer:
    return train_bpe([CORPUS], 300, pattern="gpt2")


# ---- training ---------------------------------------------------------------------------------------------

def naive_train(text: str, vocab_size: int, pattern: str) -> list[tuple[int, int]]:
    """The lecture's trainer: recount every pair of every chunk occurrence after each merge."""
    words = [list(chunk.encode()) for chunk in compile_pattern(SPLIT_PATTERNS[pattern]).findall(text)]
    vocab = [bytes([i]) for i in range(256)]
    merges: list[tuple[int, int]] = []
    while len(vocab) < vocab_size - 1:
        counts = Counter(p for w in words for p in pairwise(w))
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        merged = vocab[a] + vocab[b]
        new = vocab.index(merged) if merged in vocab else len(vocab)
        if new == len(vocab):
            vocab.append(merged)
            merges.append((a, b))
        out = []
        for w in words:
            i, nw = 0, []
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    nw.append(new)
                    i += 2
                else:
                    nw.append(w[i])
                    i += 1
            out.append(nw)
        words = out
    return merges


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_fast_trainer_learns_the_naive_trainers_merges(pattern):
    text = CORPUS[: len(CORPUS) // 4].replace(EOT, "")
    tok = train_bpe([text], 330, special_tokens=[EOT], pattern=pattern)
    assert tok.merges == naive_train(text, 330, pattern)


def test_training_fills_the_vocabulary_exactly_and_deterministically(bpe):
    assert bpe.vocab_size == 400 and len(bpe.vocab) == 399 and bpe.special_tokens == {EOT: 399}
    assert bpe.eot_id == 399 == bpe.eot_token
    assert train_bpe([CORPUS], 400).merges == bpe.merges
    assert bpe.vocab[:256] == [bytes([i]) for i in range(256)]
    for i, (a, b) in enumerate(bpe.merges, start=256):
        assert bpe.vocab[i] == bpe.vocab[a] + bpe.vocab[b]


def test_special_strings_are_cut_out_of_the_training_text():
    counts = count_chunks([f"ab{EOT}cd"], SPLIT_PATTERNS["gpt4"])
    assert counts == Counter({"ab": 1, "cd": 1})


def test_training_stops_when_no_pair_is_left():
    tok = train_bpe(["ab ab ab"], 1000)
    assert tok.vocab_size < 1000 and tok.encode("ab ab") == [tok.ranks[b"ab"], tok.ranks[b" ab"]]


def test_vocab_smaller_than_bytes_plus_specials_is_a_user_error():
    with pytest.raises(UserError, match="at least 257"):
        train_bpe([CORPUS], 256)
    with pytest.raises(UserError, match="at least 258"):
        train_bpe([CORPUS], 257, special_tokens=[EOT, "<|pad|>"])


# ---- encoding: tiktoken against our reference ------------------------------------------------------------

@PROPERTY
@given(st.text())
def test_tiktoken_agrees_with_reference_and_round_trips(bpe, s):
    ids = bpe.encode(s)
    assert ids == bpe.reference_encode(s)
    assert bpe.encode_array(s).tolist() == ids
    assert bpe.decode(ids) == s


@PROPERTY
@given(st.text())
def test_gpt2_pattern_tokenizer_agrees_too(bpe_gpt2, s):
    assert bpe_gpt2.encode(s) == bpe_gpt2.reference_encode(s)
    assert bpe_gpt2.decode(bpe_gpt2.encode(s)) == s


@PROPERTY
@given(st.lists(st.one_of(st.text(max_size=20), st.just(EOT), st.sampled_from(["<|", "|>", "endoftext"]))))
def test_special_tokens_plain_by_default_and_special_when_allowed(bpe, parts):
    s = "".join(parts)
    plain = bpe.encode(s)
    assert bpe.eot_id not in plain and plain == bpe.reference_encode(s) and bpe.decode(plain) == s
    allowed = bpe.encode(s, allowed_special="all")
    assert allowed == bpe.reference_encode(s, allowed_special={EOT})
    assert allowed.count(bpe.eot_id) == s.count(EOT)
    assert bpe.encode_array(s, allowed_special="all").tolist() == allowed
    assert bpe.decode(allowed) == s


def test_special_token_examples(bpe):
    assert bpe.encode(EOT, allowed_special={EOT}) == [bpe.eot_id]
    assert len(bpe.encode(EOT)) > 1
    with pytest.raises(UserError, match="not a special token"):
        bpe.encode("x", allowed_special={"<|nope|>"})


def test_lone_surrogates_are_replaced_like_tiktoken_does(bpe):
    s = "a\ud800b"
    assert bpe.encode(s) == bpe.reference_encode(s) and bpe.decode(bpe.encode(s)) == "a\ufffdb"
    assert bpe.encode_array(s).tolist() == bpe.encode(s)


def test_decode_of_an_unknown_id_is_a_user_error(bpe):
    with pytest.raises(UserError, match="not in this tokenizer's vocabulary"):
        bpe.decode([bpe.vocab_size + 5])


# ---- the split patterns: pinned classes make Python and tiktoken split alike ----------------------------

def probe_encoding(pattern: str, splits: list[list[str]]) -> tiktoken.Encoding:
    """A tiktoken encoding that shows tiktoken's own pre-split, given Python's splits of some strings.

    Its tokens: the 256 bytes, every Python chunk, and every concatenation of two neighbouring chunks. Where
    tiktoken splits a string as Python does, each piece is a whole token (tiktoken's shortcut), so the ids
    are exactly the Python chunks. Where it cuts a chunk finer, no token can span its pieces; where one of its
    pieces spans two or more chunks, BPE cannot stop at those chunks, since two neighbours make a token."""
    vocab = {bytes([b]) for b in range(256)}
    for chunks in splits:
        vocab.update(c.encode() for c in chunks)
        vocab.update((a + b).encode() for a, b in pairwise(chunks))
    return tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks={t: r for r, t in enumerate(sorted(vocab))},
                             special_tokens={})


def tiktoken_chunks(pattern: str, s: str) -> list[str]:
    """tiktoken's pre-split of s (see probe_encoding)."""
    enc = probe_encoding(pattern, [compile_pattern(pattern).findall(s)])
    return [enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in enc.encode_ordinary(s)]


# characters whose class differs between Python's `regex`/`re` and Rust's engine: letters newer than one
# engine's Unicode tables (U+0558, U+088F, U+0C5C, U+208F), U+001C..U+001F (space to Python only), long s
TRICKY = ["\u0558", "\u088f", "\u0c5c", "\u208f", "\x1c", "\x1f", "\u2028", "\u017f", "\u0345", "\u180e", "\u00b2"]


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
@pytest.mark.parametrize("c", TRICKY)
def test_split_matches_tiktoken_on_tricky_characters(pattern, c):
    s = f"a{c}1 {c} x{c}'{c}\n{c}  {c}{c}\r\n{c}'S{c} 'll{c}"
    assert tiktoken_chunks(SPLIT_PATTERNS[pattern], s) == compile_pattern(SPLIT_PATTERNS[pattern]).findall(s)


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_split_matches_tiktoken_across_code_points(pattern):
    """Code points in several contexts: every 97th by default, all 1.1M with SCRATCHGPT_FULL_SPLIT_SWEEP=1
    (minutes). Unpinned \\p{L} / \\s classes split at least 17,480 code points differently."""
    pat = SPLIT_PATTERNS[pattern]
    split = compile_pattern(pat).findall
    stride = 1 if os.environ.get("SCRATCHGPT_FULL_SPLIT_SWEEP") else 97
    cps = [cp for cp in range(0, 0x110000, stride) if not 0xD800 <= cp < 0xE000]
    for start in range(0, len(cps), 50_000):
        pieces = [f"a{c}1 {c} x{c}'{c}\n{c}  {c}{c}\r\n{c}'S{c} " for c in map(chr, cps[start:start + 50_000])]
        chunks = [split(p) for p in pieces]
        enc = probe_encoding(pat, chunks)
        bad = [p[1] for p, cs in zip(pieces, chunks, strict=True)
               if [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(p)] != [c.encode() for c in cs]]
        assert not bad, f"{len(bad)} code points split differently, first U+{ord(bad[0]):04X}"


@settings(max_examples=150, deadline=None)
@given(st.text(), st.sampled_from(["gpt4", "gpt2"]))
def test_split_matches_tiktoken_on_any_text(s, pattern):
    pat = SPLIT_PATTERNS[pattern]
    assert tiktoken_chunks(pat, s) == compile_pattern(pat).findall(s)


def test_gpt4_split_examples():
    split = compile_pattern(SPLIT_PATTERNS["gpt4"]).findall
    assert split("Hello world's 12345  \n\n x") == ["Hello", " world", "'s", " ", "123", "45", "  \n\n", " x"]
    assert split("I'M HERE") == ["I", "'M", " HERE"]


# ---- JSON and tokenizer directories ----------------------------------------------------------------------

def test_json_round_trip_and_documented_format(bpe):
    obj = json.loads(json.dumps(bpe.to_json()))
    assert obj["kind"] == "bpe" and obj["format"] == 1 and obj["special_tokens"] == {EOT: 399}
    assert base64.b64decode(obj["vocab"][65]) == b"A" and len(obj["merges"]) == len(obj["vocab"]) - 256
    back = tokenizer_from_json(obj)
    assert isinstance(back, BPETokenizer) and back.encode(CORPUS) == bpe.encode(CORPUS)


@pytest.mark.parametrize("damage", [
    lambda o: o.update(format=7),
    lambda o: o.update(vocab=o["vocab"][:300]),
    lambda o: o["merges"].__setitem__(0, [1, 2]),
    lambda o: o["vocab"].__setitem__(3, "!!not base64"),
    lambda o: o.update(special_tokens={EOT: 5}),
    lambda o: o.update(pattern="(unclosed"),
    lambda o: o.pop("merges"),
])
def test_damaged_json_is_a_checkpoint_error(bpe, damage):
    obj = json.loads(json.dumps(bpe.to_json()))
    damage(obj)
    with pytest.raises(CheckpointError):
        tokenizer_from_json(obj)


def test_train_files_writes_a_directory_that_loads(tmp_path):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    tok = train_bpe_files([tmp_path / "a.txt"], 300, tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json"]
    assert load_tokenizer_dir(tmp_path / "tok").encode(CORPUS) == tok.encode(CORPUS)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err


def test_cli_train_small_vocab_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    code, _, err = run_cli(capsys, "tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "200",
                           "--out", str(tmp_path / "tok"))
    assert_one_line_error(code, err, "vocabulary size 200 is too small", "at least 257")
    assert not (tmp_path / "tok").exists()


def test_cli_train_missing_input_writes_nothing(tmp_path, capsys):
    code, _, err = run_cli(capsys, "tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--vocab-size", "300",
                           "--out", str(tmp_path / "tok"))
    assert_one_line_error(code, err, "not found")
    assert not (tmp_path / "tok").exists()


def test_cli_train_then_prepare_with_the_directory(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    code, _, err = run_cli(capsys, "tokenizer", "train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "a.txt"),
                           "--vocab-size", "300", "--out", str(tmp_path / "tok"), "--pattern", "gpt2")
    assert code == 0 and "300 tokens" in err
    tok = load_tokenizer_dir(tmp_path / "tok")
    assert tok.vocab_size == 300 and tok.pattern == SPLIT_PATTERNS["gpt2"]


@pytest.mark.parametrize("make, words", [
    (lambda d: d.mkdir(), ["is not a tokenizer directory", "no tokenizer.json"]),
    (lambda d: (d.mkdir(), (d / "tokenizer.json").write_text("{not json")), ["not readable JSON"]),
    (lambda d: (d.mkdir(), (d / "tokenizer.json").write_text('{"kind": "bpe", "format": 1}')), ["usable tokenizer"]),
    (lambda d: (d.mkdir(), (d / "tokenizer.json").write_text('{"kind": "nope"}')), ["unknown tokenizer kind"]),
    (lambda d: d.write_text("x"), ["is a file, not a tokenizer directory"]),
])
def test_cli_prepare_with_a_directory_that_is_not_a_tokenizer(tmp_path, capsys, make, words):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    make(tmp_path / "tok")
    code, _, err = run_cli(capsys, "prepare", "text", "--input", str(tmp_path / "a.txt"), "--tokenizer",
                           str(tmp_path / "tok"), "--out", str(tmp_path / "data"))
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, words", [
    (["--tokenizer", "bpx"], ["did you mean 'bpe'"]),
    (["--tokenizer", "bpe", "--vocab-size", "100"], ["too small", "at least 257"]),
])
def test_cli_prepare_bad_tokenizer_name_or_size(tmp_path, capsys, args, words):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    code, _, err = run_cli(capsys, "prepare", "text", "--input", str(tmp_path / "a.txt"), *args,
                           "--out", str(tmp_path / "data"))
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "data").exists()


# ---- word ---------------------------------------------------------------------------------------------------

def test_word_tokenizer_round_trip_unknown_and_json():
    text = CORPUS.replace(EOT, "")
    tok = WordTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text and tok.encode_array(text).tolist() == tok.encode(text)
    assert tok.encode(" speak zzzunseen") == [tok.stoi[" speak"], 0] and tok.decode([0]) == "<unk>"
    small = WordTokenizer.from_text(text, max_vocab=10)
    assert small.vocab_size == 10 and 0 in small.encode(text)
    back = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert back.encode(text) == tok.encode(text)
    with pytest.raises(UserError):
        WordTokenizer.from_text(text, max_vocab=1)
    with pytest.raises(CheckpointError):
        tokenizer_from_json({"kind": "word", "words": ["a", "a"]})

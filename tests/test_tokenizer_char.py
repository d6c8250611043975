"""The character-level tokenizer: vocabulary, exact ids on the corpus, round trips, unknown characters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.errors import UserError
from scratchgpt.fileio import read_utf8
from scratchgpt.tokenizers import CharTokenizer, tokenizer_from_json

SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def corpus_tok(shakespeare_path) -> CharTokenizer:
    return CharTokenizer.from_text(read_utf8(shakespeare_path))


def test_vocab_is_sorted_unique_chars():
    tok = CharTokenizer.from_text("hello world, hello!")
    assert tok.chars == [" ", "!", ",", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 10
    assert tok.stoi == {c: i for i, c in enumerate(tok.chars)}


def test_corpus_vocab_and_lecture_ids(corpus_tok):
    assert corpus_tok.vocab_size == 65
    assert "".join(corpus_tok.chars) == SHAKESPEARE_VOCAB
    assert corpus_tok.encode("hi there") == [46, 47, 1, 58, 46, 43, 56, 43]
    assert corpus_tok.decode([46, 47, 1, 58, 46, 43, 56, 43]) == "hi there"


def test_encode_array_matches_per_char_lookup(corpus_tok, shakespeare_path):
    text = read_utf8(shakespeare_path)[:5000]
    ids = corpus_tok.encode_array(text)
    assert ids.dtype.name == "int64"
    assert ids.tolist() == [corpus_tok.stoi[c] for c in text]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=SHAKESPEARE_VOCAB, max_size=300))
def test_roundtrip_over_corpus_vocab(text):
    tok = CharTokenizer(list(SHAKESPEARE_VOCAB))
    ids = tok.encode(text)
    assert all(0 <= i < 65 for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(exclude_categories=()), min_size=1, max_size=200))
def test_roundtrip_arbitrary_text_with_its_own_vocab(text):
    # any code point (astral planes, combining marks, NUL, lone surrogates) survives a round trip through
    # its own tokenizer
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    again = tokenizer_from_json(tok.to_json())
    assert again.chars == tok.chars and again.encode(text) == tok.encode(text)


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abc", max_size=20), st.characters(blacklist_characters="abc"), st.text(alphabet="abc", max_size=20))
def test_unknown_char_names_char_and_position(prefix, bad, suffix):
    tok = CharTokenizer("abc")
    with pytest.raises(UserError) as e:
        tok.encode(prefix + bad + suffix)
    msg = str(e.value)
    assert repr(bad) in msg
    assert f"position {len(prefix)}" in msg


def test_unknown_char_first_of_several_is_reported(corpus_tok):
    with pytest.raises(UserError, match=r"'é' \(U\+00E9\) at position 3"):
        corpus_tok.encode("Caf\u00e9 \u00fcber")


def test_lone_surrogate_is_an_unknown_character(corpus_tok):
    # what undecodable bytes on a command line become (surrogateescape): a clean error, not a crash
    text = b"ab\xffc".decode("utf-8", errors="surrogateescape")
    with pytest.raises(UserError, match=r"U\+DCFF\) at position 2"):
        corpus_tok.encode(text)
    assert corpus_tok.decode(corpus_tok.encode(text, errors="replace")) == "ab?c"


def test_errors_replace_and_ignore(corpus_tok):
    assert corpus_tok.decode(corpus_tok.encode("naïve café", errors="replace")) == "na?ve caf?"
    assert corpus_tok.decode(corpus_tok.encode("naïve café", errors="ignore")) == "nave caf"
    no_q = CharTokenizer("ab ")  # no '?': a space stands in
    assert no_q.decode(no_q.encode("aXb", errors="replace")) == "a b"
    assert no_q.encode("", errors="strict") == []

"""The Tokenizer interface (tokenizers/base.py): every kind answers every member callers use, and the defaults
hold their promises (a free lower bound on the token count, special names to ids, decode in pieces, the one
chat-template refusal)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt import chat
from scratchgpt.errors import ChatError, UserError
from scratchgpt.tokenizers import CharTokenizer, Tokenizer, WordTokenizer
from scratchgpt.tokenizers.base import NO_CHAT_TEMPLATE
from scratchgpt.tokenizers.bpe_train import train_bpe

TEXT = "the quick brown fox jumps over the lazy dog. caf\u00e9 \u2603 " * 20


def _kinds() -> dict[str, Tokenizer]:
    kinds = {"char": CharTokenizer.from_text(TEXT), "word": WordTokenizer.from_text(TEXT),
             "bpe": train_bpe([TEXT], vocab_size=300)}
    try:
        from scratchgpt.tokenizers import SentencePieceTokenizer

        kinds["spm"] = SentencePieceTokenizer.train([TEXT], vocab_size=300)
    except UserError:  # the spm extra is not installed
        pass
    return kinds


KINDS = _kinds()
pieces = st.text(alphabet=sorted(set(TEXT)), max_size=40)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=40, deadline=None)
@given(text=pieces)
def test_fewest_tokens_is_a_lower_bound_and_decode_after_joins_to_decode(kind, text):
    tok = KINDS[kind]
    ids = tok.encode(text)
    assert tok.fewest_tokens(text) <= len(ids)
    assert tok.encode_array(text).tolist() == ids
    if kind == "char":
        assert tok.fewest_tokens(text) == len(text)  # exact: what lets the server refuse without tokenizing
    shown = "".join(tok.decode_after(ids[max(0, i - 2):i], ids[i:i + 1]) for i in range(len(ids)))
    if "\ufffd" not in shown:  # a character split across byte tokens shows whole only when decoded together
        assert shown == tok.decode(ids)
    assert tok.decode_bytes(ids) == tok.decode(ids).encode("utf-8")


def test_special_tokens_end_of_text_and_names_to_ids():
    bpe = KINDS["bpe"]
    assert bpe.eot_token == bpe.special_tokens["<|endoftext|>"] and KINDS["char"].eot_token is None
    assert KINDS["char"].special_tokens == {} and KINDS["word"].special_ids == frozenset()
    assert bpe.encode("<|endoftext|>") != [bpe.eot_token]  # plain text never forges a control token
    assert bpe.encode_with_special_tokens("the<|endoftext|>fox") == bpe.encode("the") + [bpe.eot_token] + bpe.encode("fox")
    char = chat.chat_tokenizer(KINDS["char"])
    user = char.special_tokens["<|user_start|>"]
    assert char.encode_with_special_tokens("the<|user_start|>fox") == char.encode("the") + [user] + char.encode("fox")
    assert char.without_special([user, *char.encode("ab"), user]) == char.encode("ab")


@pytest.mark.parametrize("kind", ["word", "spm"])
def test_kinds_without_special_tokens_refuse_the_chat_template_in_one_sentence(kind):
    if kind not in KINDS:
        pytest.skip("needs the spm extra")
    with pytest.raises(UserError, match=f"the {kind} tokenizer cannot add special tokens"):
        chat.chat_tokenizer(KINDS[kind])


def test_one_message_when_there_is_no_chat_template():
    plain = KINDS["char"]
    assert not plain.has_chat_template() and chat.chat_tokenizer(plain).has_chat_template()
    with pytest.raises(ChatError) as e:
        plain.require_chat_template()
    assert str(e.value) == NO_CHAT_TEMPLATE
    with pytest.raises(ChatError) as rendered:
        chat.prompt_ids(plain, chat.parse_messages([{"role": "user", "content": "the"}]))
    assert str(rendered.value) == NO_CHAT_TEMPLATE  # rendering says the same sentence

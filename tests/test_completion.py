"""A request's lifecycle (completion.py): tokens in, typed events out, the same rules for the engine and the
server (whole characters, stop strings and ids, special tokens hidden, finish reasons, usage)."""

from __future__ import annotations

from scratchgpt import chat
from scratchgpt.completion import Completion, Ended, Finished, TextPiece, TokenLogprob
from scratchgpt.sampling import SamplingSettings
from scratchgpt.tokenizers import CharTokenizer
from scratchgpt.tokenizers.bpe_train import train_bpe

TOK = chat.chat_tokenizer(CharTokenizer.from_text("abcdef xyz"))


def texts(events, rows):
    out = [""] * rows
    for ev in events:
        if isinstance(ev, TextPiece):
            out[ev.row] += ev.text
    return out


def reasons(events):
    return {ev.row: ev.reason for ev in events if isinstance(ev, Finished)}


def test_rows_end_by_stop_string_stop_id_or_length_and_usage_counts_every_token():
    end = TOK.special_tokens["<|assistant_end|>"]
    s = SamplingSettings(max_new_tokens=4, stop=("cd",), stop_token_ids=(end,))
    c = Completion([TOK.encode("ab"), TOK.encode("x")], 2, s, TOK)  # 2 prompts x 2 samples
    rows = [TOK.encode("abcd"), [TOK.encode("a")[0], end, 0, 0], TOK.encode("abcb"), TOK.encode("aeee")]
    events = [ev for step in zip(*rows, strict=True) for ev in c.step(list(step))]
    assert c.done and c.steps == 4
    assert texts(events, 4) == ["ab", "a", "abcb", "aeee"]  # "cd" cut and never shown; the stop id ends row 1
    assert reasons(events) == {0: "stop", 1: "stop", 2: "length", 3: "length"}
    assert c.usage().prompt_tokens == 3 and c.usage().completion_tokens == 4 + 2 + 4 + 4  # the stop id counts


def test_special_tokens_add_no_text_unless_asked_and_logprobs_ride_with_their_piece():
    user = TOK.special_tokens["<|user_start|>"]
    ids = [TOK.encode("a")[0], user, TOK.encode("b")[0]]
    hidden = Completion([TOK.encode("x")], 1, SamplingSettings(max_new_tokens=3), TOK)
    events = [ev for i, t in enumerate(ids) for ev in hidden.step([t], [-float(i)], [((t, -float(i)),)])]
    assert texts(events, 1) == ["ab"]
    entries = [e for ev in events if isinstance(ev, TextPiece) for e in ev.entries]
    assert entries == [TokenLogprob(t, -float(i), ((t, -float(i)),)) for i, t in enumerate(ids)]
    shown = Completion([TOK.encode("x")], 1, SamplingSettings(max_new_tokens=3, skip_special_tokens=False), TOK)
    assert texts([ev for t in ids for ev in shown.step([t])], 1) == ["a<|user_start|>b"]


def test_half_a_character_waits_for_the_rest_and_close_flushes():
    bpe = train_bpe(["caf\u00e9 \u2603 " * 30], vocab_size=260)
    raw = list("\u2603".encode())  # three byte tokens: nothing shows until the last
    c = Completion([bpe.encode("caf")], 1, SamplingSettings(max_new_tokens=10), bpe)
    shown = [texts(c.step([b]), 1)[0] for b in raw]
    assert shown == ["", "", "\u2603"]
    c = Completion([bpe.encode("caf")], 1, SamplingSettings(max_new_tokens=10, stop=("\u2603!",)), bpe)
    assert texts(c.step(raw[:1]), 1) == [""]
    last = c.step(raw[1:2]) + c.close()  # the caller stops early: what was held back is final now
    assert reasons(last) == {0: "length"} and not any(isinstance(ev, Ended) for ev in last)

"""`export --format hf` writes a tokenizer transformers loads for every kind we can express: on arbitrary text
`AutoTokenizer.from_pretrained(out)` (offline, the directory only) gives our ids and decodes ours to our text."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.config import Config, DataConfig, ModelConfig
from scratchgpt.interop.hf_tokenizer import SPLIT_PATTERNS, hf_tokenizer_files, ranks_to_hf, split_name
from scratchgpt.models import build_model
from scratchgpt.tokenizers import CharTokenizer, WordTokenizer
from scratchgpt.tokenizers.bpe_train import train_bpe
from scratchgpt.tokenizers.gpt2 import GPT2_PATTERN, load_gpt2

transformers = pytest.importorskip("transformers")  # the dev extra: the reference

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
        "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
        "All:\nWe know't, we know't.\t  Ünïcødé 123456 ½ ٣ — \u2028 x\r\n") * 3
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _export(tmp: Path, tokenizer) -> tuple[Path, str]:
    """A run with this tokenizer (random weights), exported with the CLI: the directory and the note it printed."""
    run, out = tmp / "run", tmp / "hf"
    m = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build_model(m)
    ckpt.write_run_header(run, Config(name="t", data=DataConfig(dir=""), model=m), tokenizer, model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # module-scoped fixtures have no capsys
        rc = main(["export", str(run), "--format", "hf", "--out", str(out)])
    assert rc == 0 and "Traceback" not in err.getvalue()
    return out, err.getvalue()


def _standin_gpt2(tmp_path: Path):
    """The gpt2 kind loaded from a small GPT-2-style vocab.json (the real one needs a download): ranks of a
    byte-level BPE trained with GPT-2's split, as tiktoken's r50k pattern spells it."""
    bpe = train_bpe([TEXT], 360, pattern="gpt2", special_tokens=[])
    vocab, _ = ranks_to_hf({t: i for i, t in enumerate(bpe.vocab)}, {})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = load_gpt2(tmp_path / "vocab.json")
    assert tok._enc._pat_str == GPT2_PATTERN and tok.vocab_size == 361
    return tok


KINDS = {
    "char": lambda tmp: CharTokenizer.from_text(TEXT),
    "word": lambda tmp: WordTokenizer.from_text(TEXT),
    "bpe-gpt4": lambda tmp: train_bpe([TEXT], 400, pattern="gpt4"),
    "bpe-gpt2": lambda tmp: train_bpe([TEXT], 400, pattern="gpt2"),
    "gpt2": _standin_gpt2,
}


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory):
    """(kind, our tokenizer, transformers' tokenizer loaded from the export, the export's note)."""
    tmp = tmp_path_factory.mktemp(request.param)
    ours = KINDS[request.param](tmp)
    out, note = _export(tmp, ours)
    theirs = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    return request.param, ours, theirs, note, out


def _texts(kind: str, ours) -> st.SearchStrategy[str]:
    """Arbitrary Unicode for the byte-level kinds and word (unseen words are <unk> on both sides); text over the
    alphabet for char, which refuses any other character. Mixed with pieces of the corpus, so merges fire."""
    if kind == "char":
        return st.text(alphabet="".join(ours.chars))
    pieces = st.sampled_from(TEXT.split(" ")).map(lambda w: " " + w)
    return st.lists(st.one_of(st.text(), pieces), max_size=8).map("".join)


@SLOW
@given(data=st.data())
def test_transformers_encodes_and_decodes_like_ours(exported, data):
    kind, ours, theirs, _, _ = exported
    text = data.draw(_texts(kind, ours))
    ids = ours.encode(text)
    assert theirs.encode(text) == ids
    assert theirs.decode(ids) == ours.decode(ids)


def test_the_corpus_itself_and_the_notes(exported):
    kind, ours, theirs, note, out = exported
    assert theirs.encode(TEXT) == ours.encode(TEXT) and theirs.decode(ours.encode(TEXT)) == ours.decode(ours.encode(TEXT))
    assert "error" not in note and "tokenizer.json" in note and (out / "tokenizer.json").is_file()
    has_gpt2_files = (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    assert has_gpt2_files == (kind in ("bpe-gpt2", "gpt2"))  # GPT2Tokenizer splits with GPT-2's regex only
    config = json.loads((out / "config.json").read_text())
    if kind.startswith("bpe"):  # the end-of-text token: a special token there, as `allowed_special="all"` here
        eot = ours.eot_id
        assert theirs.eos_token_id == eot and config["eos_token_id"] == eot
        s = "the end<|endoftext|>next"
        assert theirs.encode(s) == ours.encode(s, allowed_special="all")


@SLOW
@given(data=st.data())
def test_any_ids_decode_alike(exported, data):
    """Any ids, even byte-level ones that cut a character in two (U+FFFD on both sides), decode alike."""
    _, ours, theirs, _, _ = exported
    ids = data.draw(st.lists(st.integers(0, ours.vocab_size - 1), max_size=12))
    assert theirs.decode(ids) == ours.decode(ids)


def test_char_refuses_an_unknown_character_there_too(tmp_path):
    files, _ = hf_tokenizer_files(CharTokenizer("ab"), 16)
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert theirs.encode("abba") == [0, 1, 1, 0]
    with pytest.raises(Exception, match="UNK|unk"):
        theirs.encode("abc")


def test_split_patterns_are_known_by_name_not_spelling():
    assert split_name(SPLIT_PATTERNS["gpt2"]) == "gpt2" and split_name(GPT2_PATTERN) == "gpt2"
    assert split_name(SPLIT_PATTERNS["gpt4"]) == "gpt4" and split_name(r"\w+|\s") is None
    assert SPLIT_PATTERNS["gpt2"] != GPT2_PATTERN  # the spellings differ: why comparing strings failed


def test_sentencepiece_exports_its_model_and_says_why_no_tokenizer_json(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from scratchgpt.tokenizers import SentencePieceTokenizer

    ours = SentencePieceTokenizer.train([TEXT], 400)
    out, err = _export(tmp_path, ours)
    assert "sentencepiece.model" in err and "no tokenizer.json" in err and err.count("\n") == 1
    assert not (out / "tokenizer.json").exists() and not (out / "tokenizer_config.json").exists()
    theirs = spm.SentencePieceProcessor(model_file=str(out / "sentencepiece.model"))
    assert theirs.encode(TEXT) == ours.encode(TEXT)

"""The generation engine against the uncached path: greedy and seeded sampling token for token, past the
block size, batches of different-length prompts against each prompt alone, shared prefills, stop strings,
streaming of multi-byte characters, the sliding policy as documented, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchgpt.errors import UserError
from scratchgpt.generate import DecodeCore, Engine, PromptError, Request, keep_after_slide
from scratchgpt.models.bigram import BigramLanguageModel
from scratchgpt.models.gpt import GPT, GPTConfig
from scratchgpt.sampling import MAX_NEW_TOKENS_CAP, SamplingSettings, TextStream
from scratchgpt.tokenizers import CharTokenizer, Tokenizer

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65


class ByteTokenizer(Tokenizer):
    """Byte-level stand-in for a BPE tokenizer: ids 0..255 are bytes, so one character can span tokens."""

    kind = "bytes"

    def __init__(self, vocab_size: int = 256, eot: int | None = None):
        self.vocab_size, self.eot_token = vocab_size, eot

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def make_gpt(vocab: int, seed: int = 0, **kw) -> GPT:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=vocab, init_std=0.1)
    base.update(kw)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**base)).eval()


# the shapes the issue names: char, a BPE-sized model (rotary, RMSNorm, QK-norm, untied), GPT-2's vocab with
# biases, and a bigger vocabulary
MODELS = {
    "char": dict(vocab=65),
    "bpe": dict(vocab=1024, pos_emb="rope", norm="rmsnorm", qk_norm=True, tie_weights=False, mlp="relu2"),
    "gpt2_shape": dict(vocab=50257, bias=True, mlp="gelu_tanh", n_layer=2, n_head=4, n_embd=64, block_size=32),
    "big_vocab": dict(vocab=100277, n_layer=1, n_embd=16, block_size=24),
}


def model_for(name: str) -> GPT:
    kw = dict(MODELS[name])
    return make_gpt(kw.pop("vocab"), **kw)


def prompts_for(model: GPT, lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("window", ["full", "half"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_cached_equals_uncached_past_the_block(name, window):
    model = model_for(name)
    engine = Engine(model)
    W = model.config.block_size
    prompts = prompts_for(model, [3, W // 2 + 1, W])
    n = 3 * W  # slides several times
    cached = engine.generate_ids(prompts, temperature=0, max_new_tokens=n, window=window)
    plain = engine.generate_ids(prompts, temperature=0, max_new_tokens=n, use_cache=False, window=window)
    assert cached == plain
    assert all(len(row) == n for row in cached)
    assert len({t for row in cached for t in row}) > 3  # not a degenerate constant stream


@pytest.mark.parametrize("name", ["char", "bpe", "gpt2_shape"])
def test_seeded_sampling_cached_equals_uncached(name):
    model = model_for(name)
    engine = Engine(model)
    prompts = prompts_for(model, [2, 9])
    s = SamplingSettings(max_new_tokens=model.config.block_size + 5, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    cached = engine.generate_ids(prompts, s, num_samples=2)
    assert cached == engine.generate_ids(prompts, s, num_samples=2, use_cache=False)
    assert cached == engine.generate_ids(prompts, s, num_samples=2)  # same seed, same tokens
    assert cached != engine.generate_ids(prompts, s.replace(seed=8), num_samples=2)
    assert cached[0] != cached[1]  # two samples of one prompt differ


def test_batch_of_different_lengths_equals_each_alone():
    model = model_for("char")
    engine = Engine(model)
    W = model.config.block_size
    prompts = prompts_for(model, [1, 5, W - 1, W, W + 9])  # the last is truncated from the left
    batched = engine.generate_ids(prompts, temperature=0, max_new_tokens=2 * W + 3)
    alone = [engine.generate_ids([p], temperature=0, max_new_tokens=2 * W + 3)[0] for p in prompts]
    assert batched == alone


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 20), min_size=1, max_size=4), n=st.integers(0, 30),
       samples=st.integers(1, 2))
def test_batched_greedy_equals_alone_property(lengths, n, samples):
    model = _PROPERTY_MODEL
    engine = Engine(model)
    prompts = prompts_for(model, lengths, seed=len(lengths) * 31 + n)
    batched = engine.generate_ids(prompts, temperature=0, max_new_tokens=n, num_samples=samples)
    for i, p in enumerate(prompts):
        alone = engine.generate_ids([p], temperature=0, max_new_tokens=n)[0]
        assert batched[i * samples : (i + 1) * samples] == [alone] * samples


_PROPERTY_MODEL = make_gpt(65, seed=3, n_layer=1, block_size=12, pos_emb="rope")


@pytest.mark.parametrize("window", ["full", "half"])
def test_sliding_policy_matches_a_hand_written_loop(window):
    """The documented policy, written out plainly: a window of at most W; when full, keep the newest W
    ("full": the lecture's crop to the last block, every token) or the newest ceil(W/2) ("half")."""
    model = make_gpt(65, seed=5, block_size=10)
    W, keep = 10, keep_after_slide(10, window)
    if window == "half":
        assert keep == 5 and keep_after_slide(7) == 4 and keep_after_slide(1) == 1
    else:
        assert keep == W
    prompt = prompts_for(model, [14])[0]
    seq, start = prompt[-W:], 0
    for _ in range(40):
        if len(seq) - start > W:
            start = len(seq) - keep
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
    assert Engine(model).generate_ids([prompt], temperature=0, max_new_tokens=40, window=window)[0] == seq[W:]


def test_full_window_is_the_lectures_crop_to_the_last_block():
    """The default: every step sees exactly the last block_size tokens, as `idx[:, -block_size:]` does."""
    model = make_gpt(65, seed=6, block_size=8)
    prompt = prompts_for(model, [3])[0]
    seq = list(prompt)
    for _ in range(30):
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[-8:]]))
        seq.append(int(logits[0, -1].argmax()))
    assert Engine(model).generate_ids([prompt], temperature=0, max_new_tokens=30)[0] == seq[3:]


def test_bigram_goes_through_the_same_core():
    """The bigram has the GPT's forward signature and a cache of no layers: the core drives it like any model,
    and past its block of 8 it agrees with the uncached reference."""
    torch.manual_seed(0)
    model = BigramLanguageModel(65, block_size=8, init_std=1.0)
    engine = Engine(model, CharTokenizer(list(CHARS)))
    prompts = [[1, 2, 3], [4] * 8]
    for window in ("full", "half"):
        s = SamplingSettings(max_new_tokens=30, temperature=0.9, seed=3, window=window)
        assert engine.generate_ids(prompts, s) == engine.generate_ids(prompts, s, use_cache=False)
    text = engine.generate("ROMEO:", max_new_tokens=50, seed=3)
    assert len(text) == 50 and text == engine.generate("ROMEO:", max_new_tokens=50, seed=3)


def test_prefill_fills_the_cache_and_gives_the_models_last_logits():
    model = model_for("char")
    core = DecodeCore(model, lanes=3)
    c = model.config
    assert core.cache.k.shape == (c.n_layer, 3, c.n_head, c.block_size, c.n_embd // c.n_head)
    prompts = prompts_for(model, [6, 6, 6])
    with torch.no_grad():
        full, _ = model(torch.tensor(prompts))
        core.add([Request(prompts, 1, SamplingSettings(max_new_tokens=1))])
    torch.testing.assert_close(core.logits, full[:, -1])
    assert core.cache.k[:, :, :, :6].abs().sum() > 0 and core.cache.k[:, :, :, 6:].abs().sum() == 0


def test_a_bf16_model_decodes_with_a_float32_cache_on_a_cpu():
    """On a CPU the cache holds float32 whatever the weights (one-query attention is faster and more exact
    there); prefill attends in bf16 as scoring does, decode in float32, and each step's logits agree with the
    uncached bf16 forward to bf16 rounding."""
    model = model_for("gpt2_shape").to(torch.bfloat16)
    core = DecodeCore(model, lanes=2)
    assert core.cache.k.dtype == core.cache.v.dtype == torch.float32
    prompt = prompts_for(model, [7])[0]
    with torch.no_grad():
        core.add([Request([prompt], 1, SamplingSettings(max_new_tokens=8, temperature=0))])
        tokens = list(prompt)
        for _ in range(6):
            full, _ = model(torch.tensor([tokens]))
            torch.testing.assert_close(core.logits[0], full[0, -1].float(), atol=0.05, rtol=0.05)
            (sampled,) = core.sample()
            tokens.append(int(sampled.tokens[0]))
            core.advance([sampled])
    assert model.config.block_size > len(tokens)


def test_the_core_keeps_its_records_and_checks_prompts_once():
    """A request is the caller's: the core reads it and keeps lanes, generator and scores in its own records
    (the same request can be added to two cores); bad prompts are one typed error, the same from the core and
    the engine."""
    model = model_for("char")
    s = SamplingSettings(max_new_tokens=3, seed=4)
    req = Request(prompts_for(model, [5, 3]), 2, s, logprobs=1, prompt_logprobs=True)
    before = dict(vars(req))
    a, b = DecodeCore(model, lanes=4), DecodeCore(model, lanes=8)
    with torch.no_grad():
        a.add([req])
        b.add([req])
        assert vars(req) == before  # nothing written into it
        assert [x.tokens.tolist() for x in a.sample()] == [x.tokens.tolist() for x in b.sample()]
        chosen, values, ids = a.prompt_scores(req)[0]
        assert chosen.shape == (4,) and values.shape == ids.shape == (4, 1)
        a.release(req)
        assert a.active == 0 and b.active == 4 and vars(req) == before
    V, W = model.config.vocab_size, model.config.block_size
    for bad, too_long in (([[1, V]], False), ([[]], False), ([[1] * (W + 1)], True)):
        with pytest.raises(PromptError) as e:
            a.check(bad)
        assert e.value.too_long is too_long and e.value.index == 0
    with pytest.raises(PromptError, match=rf"prompt token ids must be in \[0, {V}\)"):
        Engine(model).generate_ids([[0], [1, V]], max_new_tokens=1)
    with pytest.raises(PromptError) as e:
        DecodeCore(model, lanes=1).add([Request([[1, 2, -1]], 1, s)])
    assert e.value.detail.startswith("token ids must be in")
    assert len(Engine(model).generate_ids([[1] * (W + 5)], max_new_tokens=2)[0]) == 2  # the engine keeps its end


# ---- text: streaming, stop strings, bad input --------------------------------------------------------

def char_engine(**kw) -> Engine:
    return Engine(make_gpt(65, seed=11, **kw), CharTokenizer(list(CHARS)))


def test_stream_joins_to_generate_and_seed_reproduces():
    engine = char_engine()
    pieces = list(engine.stream("ROMEO:", max_new_tokens=40, temperature=0.8, seed=5))
    assert "".join(pieces) == engine.generate("ROMEO:", max_new_tokens=40, temperature=0.8, seed=5)
    assert len("".join(pieces)) == 40 and len(pieces) > 1
    texts = engine.generate(["A", "BB"], num_samples=2, max_new_tokens=10, seed=1)
    assert isinstance(texts, list) and len(texts) == 4


def test_stop_string_ends_the_text_and_is_not_emitted():
    engine = char_engine()
    full = engine.generate("KING:", max_new_tokens=60, temperature=0, seed=0)
    stop = full[20:23]
    cut = engine.generate("KING:", max_new_tokens=60, temperature=0, stop=stop)
    assert cut == full[: full.index(stop)]
    assert engine.generate("KING:", max_new_tokens=60, temperature=0, stop=["zzzzq", stop]) == cut
    assert "".join(engine.stream("KING:", max_new_tokens=60, temperature=0, stop=stop)) == cut


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab\n", max_size=40), stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4),
                                                                   max_size=2))
def test_text_stream_stops_at_the_first_completed_stop_string(text, stops):
    tok = CharTokenizer(list("ab\n"))
    ts = TextStream(tok, tuple(stops))
    out = "".join(ts.push(i) for i in tok.encode(text)) + ts.finish()
    expected = text  # the text stops as soon as what has come so far contains a stop string
    for end in range(1, len(text) + 1):
        hits = [text[:end].find(s) for s in stops if s in text[:end]]
        if hits:
            expected = text[: min(hits)]
            break
    assert out == expected


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=30))
def test_stream_yields_only_whole_characters(text):
    tok = ByteTokenizer()
    ts = TextStream(tok)
    pieces = [ts.push(i) for i in tok.encode(text)] + [ts.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces) or "\ufffd" in text


def test_byte_model_streams_complete_characters():
    """A byte-level model whose every token splits a character: the streamed pieces are whole characters and
    add up to the text. The model is a bigram table set by hand to cycle through the bytes of "\u00e9\u2603"
    (c3 a9 e2 98 83), so greedy decoding writes that text over and over."""
    tok = ByteTokenizer()
    cycle = list("\u00e9\u2603".encode("utf-8"))
    model = BigramLanguageModel(256, block_size=16).eval()
    with torch.no_grad():
        model.token_embedding_table.weight.zero_()
        for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True):
            model.token_embedding_table.weight[a, b] = 10.0
    engine = Engine(model, tok)
    pieces = list(engine.stream("\u00e9", max_new_tokens=5 * 7, temperature=0))
    assert "".join(pieces) == "\u2603\u00e9" * 7
    assert all(set(p) <= {"\u00e9", "\u2603"} for p in pieces) and len(pieces) == 14  # each character once whole


def test_padded_model_vocabulary_is_never_sampled():
    engine = Engine(make_gpt(320, seed=6, init_std=0.5), ByteTokenizer(256))
    ids = engine.generate_ids([[65, 66]], max_new_tokens=200, seed=1)[0]
    assert max(ids) < 256


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from scratchgpt.tokenizers.bpe_train import train_bpe

    text = "caf\u00e9 \u00fcber na\u00efve \u2603 \u65e5\u672c\u8a9e \U0001f600 the quick brown fox. " * 20
    return train_bpe([text], vocab_size=300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="ab \u00e9\u00fc\u2603\u65e5\u672c\U0001f600", max_size=30))
def test_bpe_stream_yields_only_whole_characters(bpe_tokenizer, text):
    ids = bpe_tokenizer.encode(text)
    ts = TextStream(bpe_tokenizer, context=bpe_tokenizer.encode("x"))
    pieces = [ts.push(i) for i in ids] + [ts.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_bpe_model_generates_through_the_engine(bpe_tokenizer):
    model = make_gpt(bpe_tokenizer.vocab_size, seed=8)
    engine = Engine(model, bpe_tokenizer)
    text = engine.generate("caf\u00e9 \u2603", max_new_tokens=40, seed=2)
    assert isinstance(text, str) and text == "".join(engine.stream("caf\u00e9 \u2603", max_new_tokens=40, seed=2))
    assert engine.encode("") == [bpe_tokenizer.eot_token]  # the empty prompt starts at <|endoftext|>


def test_generation_stops_at_end_of_text_unless_asked_to_go_on(bpe_tokenizer):
    """The end-of-text rule of `sample`, the Python API and the server: a row ends at <|endoftext|>."""
    tok = bpe_tokenizer
    torch.manual_seed(0)
    model = BigramLanguageModel(tok.vocab_size).eval()
    the, eot = tok.encode("the")[-1], tok.eot_token
    with torch.no_grad():  # after "the" always <|endoftext|>, after that always "the"
        model.token_embedding_table.weight[the, eot] = 50.0
        model.token_embedding_table.weight[eot, the] = 50.0
    engine = Engine(model, tok)
    assert engine.generate("the", max_new_tokens=20, temperature=0) == ""
    assert engine.generate_ids([tok.encode("the")], max_new_tokens=20, temperature=0) == [[]]
    on = engine.generate_ids([tok.encode("the")], max_new_tokens=6, temperature=0, ignore_eos=True)
    assert on == [[eot, the] * 3]
    # past it, <|endoftext|> adds no text (special tokens are never text) unless asked to show them
    assert engine.generate("the", max_new_tokens=4, temperature=0, ignore_eos=True) == tok.decode([the] * 2)
    assert engine.generate("the", max_new_tokens=4, temperature=0, ignore_eos=True,
                           skip_special_tokens=False) == tok.decode([eot, the] * 2)
    # rows end on their own: one batch, one row stops at once, the other runs its length
    rows = engine.generate_ids([tok.encode("the"), tok.encode("caf")], max_new_tokens=5, temperature=0)
    assert rows[0] == [] and len(rows[1]) == 5


def test_empty_prompt_starts_from_newline_or_end_of_text():
    assert char_engine().encode("") == [0]  # "\n" is id 0 in tiny Shakespeare's vocabulary
    assert Engine(make_gpt(300), ByteTokenizer(300, eot=256)).encode("") == [256]
    assert len(char_engine().generate("", max_new_tokens=7, seed=1)) == 7


def test_long_prompt_is_truncated_and_said_once(capsys):
    engine = char_engine(block_size=8)
    long = "ROMEO: what light through yonder window breaks"
    a = engine.generate(long, max_new_tokens=5, temperature=0)
    assert a == engine.generate(long[-8:], max_new_tokens=5, temperature=0)
    engine.generate([long, long + "s"], max_new_tokens=2)
    err = capsys.readouterr().err
    assert err.count("longer than the context") == 1 and "keeping its last 8 tokens" in err


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(top_p=0.0), "top-p must be in (0, 1]"),
    (dict(top_p=1.5), "top-p must be in (0, 1]"),
    (dict(temperature=-0.1), "temperature must be a number of at least 0"),
    (dict(max_new_tokens=MAX_NEW_TOKENS_CAP + 1), f"from 0 to {MAX_NEW_TOKENS_CAP:,}"),
    (dict(max_new_tokens=-1), "max new tokens"),
    (dict(top_k=0), "top-k must be a positive"),
    (dict(stop=[""]), "stop string"),
    (dict(temprature=1.0), "did you mean 'temperature'"),
])
def test_bad_settings_are_one_sentence(kwargs, fragment):
    engine = char_engine()
    with pytest.raises(UserError, match=None) as e:
        engine.stream("A", **kwargs)  # raises at the call, before any iteration
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_character_is_a_user_error_before_anything_runs():
    with pytest.raises(UserError, match="not in the tokenizer's vocabulary"):
        char_engine().stream("caf\u00e9")
    with pytest.raises(UserError, match="number of samples"):
        char_engine().generate("A", num_samples=0)


def test_settings_after_a_stream_leave_grad_mode_alone():
    engine = char_engine()
    it = engine.stream("A", max_new_tokens=5, seed=1)
    next(it)
    assert torch.is_grad_enabled()  # between pieces the caller's autograd state is its own
    it.close()


def test_the_graph_shaped_step_on_cpu():
    """What the CUDA graph runs (a bucket of lanes, whole-window attention under a mask, tokens back every few
    steps), eagerly: 3 rows decode in a bucket of 4 lanes."""
    model = model_for("bpe")
    prompts = prompts_for(model, [2, 7, 16])
    s = SamplingSettings(max_new_tokens=40, temperature=0.7, top_k=20, seed=2)
    engine = Engine(model, sync_every=6, fixed_shapes=True)
    chunks = list(engine.token_steps(prompts, s))
    assert [c.size(1) for c in chunks] == [6] * 6 + [4]
    assert engine.core(3).buckets == [1, 2, 3] and engine.core(3).fixed_shapes
    assert torch.cat(chunks, dim=1).tolist() == Engine(model).generate_ids(prompts, s, use_cache=False)
    padded = DecodeCore(model, lanes=8, fixed_shapes=True)  # 3 rows in a bucket of 4 of 8 lanes
    with torch.no_grad():
        req = Request(prompts, 1, s)
        padded.add([req])
        out = []
        for _ in range(40):
            (sampled,) = padded.sample()
            out.append(sampled.tokens)
            padded.advance([sampled])
    assert torch.stack(out, dim=1).tolist() == torch.cat(chunks, dim=1).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["char", "gpt2_shape"])
def test_cuda_graph_decode_matches_eager(name):
    model = model_for(name).cuda()
    prompts = prompts_for(model, [3, model.config.block_size // 2])
    s = SamplingSettings(max_new_tokens=2 * model.config.block_size + 3, temperature=0)
    graphed = Engine(model, cuda_graphs=True)
    eager = Engine(model, cuda_graphs=False)
    assert graphed.generate_ids(prompts, s) == eager.generate_ids(prompts, s)
    assert graphed.core(2).graphed
    assert graphed.generate_ids(prompts, s) == eager.generate_ids(prompts, s, use_cache=False)

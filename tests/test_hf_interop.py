"""Hugging Face GPT-2 in and out: parity with transformers, exact round trips, clear refusals of bad input."""

from __future__ import annotations

import collections
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_config
from scratchgpt import checkpoint as ckpt
from scratchgpt.cli import main
from scratchgpt.config import Config, ConfigError, DataConfig, ModelConfig
from scratchgpt.errors import CheckpointError, UserError
from scratchgpt.interop import hf
from scratchgpt.interop.hf_tokenizer import GPT2_PATTERN, hf_to_ranks, hf_tokenizer_files, ranks_to_hf
from scratchgpt.models import build_model
from scratchgpt.tokenizers import CharTokenizer
from scratchgpt.tokenizers.bpe import TiktokenTokenizer
from scratchgpt.train import train

transformers = pytest.importorskip("transformers")  # the dev extra; the reference implementation
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

SMALL = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97)


def _hf_model(std: float, seed: int = 0, **shape) -> GPT2LMHeadModel:
    """A transformers GPT-2 with every weight random (norms and biases too, so a mix-up shows)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "ln_" in name and name.endswith(".weight") else 0.0, std)
    return model


@pytest.fixture(scope="module")
def hf_small(tmp_path_factory) -> tuple[GPT2LMHeadModel, Path]:
    model = _hf_model(0.3, **SMALL)
    out = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(out, safe_serialization=True)
    return model, out


def _ours(directory) -> torch.nn.Module:
    cfg, state, _ = hf.load_pretrained(str(directory))
    return hf.build_loaded(cfg, state).eval()


def _greedy(forward, idx: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        nxt = forward(idx)[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, nxt), dim=1)
    return idx


def _run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@torch.no_grad()
def test_import_matches_transformers_logits_and_greedy(hf_small):
    ref, path = hf_small
    ours = _ours(path)
    assert ours.config.mlp == "gelu_tanh" and ours.config.bias == "gpt2" and ours.config.tie_weights
    x = torch.randint(0, SMALL["vocab_size"], (4, 48), generator=torch.Generator().manual_seed(1))
    assert (ours(x)[0] - ref(x).logits).abs().max() < 1e-4
    prompt = x[:2, :8]
    a = _greedy(lambda i: ours(i)[0], prompt, 50)
    b = _greedy(lambda i: ref(i).logits, prompt, 50)
    assert torch.equal(a, b)


@torch.no_grad()
def test_import_real_124m_shape(tmp_path):
    with torch.device("meta"):  # transformers' own init of 124M parameters is slow; fill them here instead
        ref = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257))
    ref = ref.to_empty(device="cpu").eval()
    ref.tie_weights()
    gen = torch.Generator().manual_seed(0)
    for name, p in ref.named_parameters():
        p.normal_(1.0 if "ln_" in name and name.endswith(".weight") else 0.0, 0.02, generator=gen)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    cfg, state, _ = hf.load_pretrained(str(tmp_path))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (12, 12, 768, 1024, 50257)
    ours = hf.build_loaded(cfg, state).eval()
    x = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(2))
    assert (ours(x)[0] - ref(x).logits).abs().max() < 1e-4
    back = hf.state_to_hf(ours.state_dict(), cfg)  # what export writes, against what transformers saved
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert back.keys() == saved.keys() and all(torch.equal(back[k], saved[k]) for k in saved)


def _write_run(run: Path, model_cfg: ModelConfig, tokenizer=None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    with torch.no_grad():  # weights away from init so biases and norms are not trivially 0 or 1
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    cfg = Config(name="t", data=DataConfig(dir=""), model=model_cfg)
    ckpt.write_run_header(run, cfg, tokenizer, model.num_params())
    ckpt.save_weights(run / ckpt.MODEL, model, step=0)
    return model.eval()


@pytest.mark.parametrize("bias,tie,mlp", [(False, True, "gelu"), (True, False, "gelu_tanh")])
@torch.no_grad()
def test_export_loads_in_transformers(tmp_path, capsys, bias, tie, mlp):
    m = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=50, bias=bias, tie_weights=tie, mlp=mlp)
    ours = _write_run(tmp_path / "run", m)
    rc, err = _run_cli(capsys, "export", tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf")
    assert rc == 0 and "no tokenizer" in err
    ref = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(3))
    assert (ours(x)[0] - ref(x).logits).abs().max() < 1e-4
    assert torch.equal(_greedy(lambda i: ours(i)[0], x[:, :4], 20), _greedy(lambda i: ref(i).logits, x[:, :4], 20))


def test_import_export_import_is_exact(hf_small, tmp_path, capsys):
    _, path = hf_small
    rc, _ = _run_cli(capsys, "import-hf", path, "--out", tmp_path / "run")
    assert rc == 0
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "model.safetensors"}
    rc, _ = _run_cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "hf")
    assert rc == 0
    first, again = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    (cfg1, s1, _), (cfg2, s2, _) = hf.load_pretrained(str(path)), hf.load_pretrained(str(tmp_path / "hf"))
    assert replace(cfg1, init_from="") == replace(cfg2, init_from="")
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_sample_works_on_an_imported_gpt2(hf_small, tmp_path, capsys):
    _, path = hf_small
    run = tmp_path / "run"
    assert _run_cli(capsys, "import-hf", path, "--out", run)[0] == 0
    rc, err = _run_cli(capsys, "sample", run, "--max-new-tokens", "5")
    assert rc == 2 and "tokenizer.json" in err  # imported without one: a clear sentence
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]  # exactly the model's 97 ids
    (run / ckpt.TOKENIZER).write_text(json.dumps(CharTokenizer(chars).to_json()))
    rc = main(["sample", str(run), "--prompt", "Hi", "--max-new-tokens", "30", "--temperature", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("Hi") and len(out) >= 32


def test_hub_name_resolves_through_huggingface_hub(hf_small, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    _, path = hf_small
    calls = []

    def fake_snapshot(repo, **kwargs):
        calls.append((repo, kwargs["local_files_only"]))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    cfg, _, _ = hf.load_pretrained("gpt2")
    assert calls == [("openai-community/gpt2", True)] and cfg.n_embd == SMALL["n_embd"]


def test_hub_name_offline_is_one_sentence(tmp_path, monkeypatch, capsys):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hermetic: only the (empty) cache is consulted
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rc, err = _run_cli(capsys, "import-hf", "gpt2-medium", "--out", tmp_path / "run")
    assert rc == 2 and "pass its directory" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def _broken(path: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    edit(bad)
    return bad


def _edit_config(**changes):
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _truncate(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _pickle_only(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _extra_tensor(d: Path) -> None:
    tensors = load_file(str(d / "model.safetensors"))
    tensors["transformer.h.9.attn.c_attn.weight"] = torch.zeros(32, 96)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("edit,words", [
    (_edit_config(model_type="llama", architectures=["LlamaForCausalLM"]), "llama"),
    (_edit_config(n_embd=64), "does not match its config.json"),
    (_edit_config(vocab_size=100), "does not match its config.json"),
    (_edit_config(n_layer=3), "lacks"),
    (_edit_config(n_layer=1), "does not have"),
    (_edit_config(activation_function="swish"), "activation_function"),
    (_edit_config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (_edit_config(layer_norm_epsilon="tiny"), "layer_norm_epsilon"),
    (_edit_config(n_head=5), "not divisible"),
    (_edit_config(n_inner=100), "n_inner"),
    (_truncate, "not a valid safetensors"),
    (_pickle_only, "pickle"),
    (_extra_tensor, "does not have"),
    (lambda d: (d / "config.json").unlink(), "no config.json"),
])
def test_bad_hf_directories_are_refused(hf_small, tmp_path, capsys, edit, words):
    bad = _broken(hf_small[1], tmp_path, edit)
    rc, err = _run_cli(capsys, "import-hf", bad, "--out", tmp_path / "run")
    assert rc == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_not_a_directory_nor_a_hub_name(tmp_path, capsys):
    rc, err = _run_cli(capsys, "import-hf", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert rc == 2 and "neither a directory nor one of gpt2" in err


@pytest.mark.parametrize("key,value", [("pos_emb", "rope"), ("norm", "rmsnorm"), ("mlp", "relu2"), ("qk_norm", True)])
def test_export_refuses_what_gpt2_cannot_express(tmp_path, capsys, key, value):
    m = replace(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20), **{key: value})
    _write_run(tmp_path / "run", m)
    rc, err = _run_cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "hf")
    assert rc == 2 and f"model.{key}" in err and not (tmp_path / "hf").exists()


def test_export_refuses_a_head_bias_naming_the_key(tmp_path, capsys):
    m = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20, tie_weights=False, mlp="relu",
                    bias="lecture")  # the lecture's pattern: its head has a bias, GPT-2's cannot
    _write_run(tmp_path / "lecture", m)
    rc, err = _run_cli(capsys, "export", tmp_path / "lecture", "--out", tmp_path / "hf")
    assert rc == 2 and "model.bias" in err and "head" in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_export_out_rules_and_atomicity(tmp_path, capsys, monkeypatch):
    _write_run(tmp_path / "run", ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in ([], ["--force"]):  # a directory that is not an export is never replaced, --force or not
        rc, err = _run_cli(capsys, "export", tmp_path / "run", "--out", out, *force)
        assert rc == 2 and "holds files it did not write ('keep.txt')" in err and (out / "keep.txt").read_text() == "mine"
    rc, err = _run_cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "run", "--force")
    assert rc == 2 and "being read" in err and (tmp_path / "run" / "config.json").is_file()
    (out / "keep.txt").unlink()
    assert _run_cli(capsys, "export", tmp_path / "run", "--out", out)[0] == 0
    (out / "keep.txt").write_text("mine")  # the user's file beside an export
    rc, err = _run_cli(capsys, "export", tmp_path / "run", "--out", out)
    assert rc == 2 and "already holds a Hugging Face export" in err and "--force" in err
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(OSError):
        hf.export_hf(tmp_path / "run", out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old directory, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary left behind
    monkeypatch.undo()
    assert _run_cli(capsys, "export", tmp_path / "run", "--out", out, "--force")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "keep.txt", "model.safetensors"]


# ---- init_from: training starts from the imported weights --------------------------------------------

def test_init_from_starts_training_from_the_weights(hf_small, small_text_dir, tmp_path):
    _, path = hf_small
    cfg = tiny_config(small_text_dir, max_iters=1, learning_rate=1e-12, min_lr=0.0, warmup_iters=0, eval_interval=1,
                      eval_iters=1, weight_decay=0.0)
    cfg = replace(cfg, model=ModelConfig(init_from=str(path), block_size=16, dropout=0.0))
    result = train(cfg, out_dir=tmp_path / "run", progress=False)
    run_cfg = ckpt.read_config(result.run_dir)
    assert (run_cfg.model.n_embd, run_cfg.model.block_size, run_cfg.model.mlp) == (32, 16, "gelu_tanh")
    _, state, _ = hf.load_pretrained(str(path))
    trained = load_file(str(result.run_dir / ckpt.MODEL))
    assert torch.allclose(trained["wpe.weight"], state["wpe.weight"][:16], atol=1e-6)
    assert torch.allclose(trained["h.1.mlp.c_fc.weight"], state["h.1.mlp.c_fc.weight"], atol=1e-6)


def test_init_from_refuses_a_conflicting_recipe(hf_small, small_text_dir):
    tok = CharTokenizer("abc")
    base = tiny_config(small_text_dir)
    with pytest.raises(ConfigError, match="model.n_layer"):
        hf.apply_init_from(replace(base, model=ModelConfig(init_from=str(hf_small[1]), n_layer=3)), tok)
    with pytest.raises(ConfigError, match="positions"):
        hf.apply_init_from(replace(base, model=ModelConfig(init_from=str(hf_small[1]), block_size=128)), tok)


# ---- tokenizer files ---------------------------------------------------------------------------------

def _train_ranks(text: str, n_merges: int) -> dict[bytes, int]:
    """A small byte-level BPE (GPT-2's pre-tokenizer) to stand in for GPT-2's, which needs a download."""
    import regex

    ranks = {bytes([b]): b for b in range(256)}
    words = collections.Counter(regex.findall(GPT2_PATTERN, text))
    seqs = {w: [bytes([b]) for b in w.encode()] for w in words}
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:], strict=False):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return ranks


class _TiktokenTokenizer(TiktokenTokenizer):
    """A tokenizer built on a tiktoken Encoding, as the gpt2 kind is."""

    kind = "test-bpe"

    def __init__(self, enc):
        self._enc = enc


def test_tokenizer_files_match_transformers(tmp_path):
    import tiktoken

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak. " * 20
    ranks = _train_ranks(text, 60)
    eot = len(ranks)
    enc = tiktoken.Encoding("t", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": eot})
    vocab, merges = ranks_to_hf(ranks, {"<|endoftext|>": eot})
    assert hf_to_ranks(vocab) == ranks and len(merges) == len(ranks) - 256
    files, note = hf_tokenizer_files(_TiktokenTokenizer(enc), 64)
    assert files is not None and "vocab.json" in note
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sample = "Before we proceed, hear me: ünïcødé 123  Speak!\n"
    assert theirs.encode(sample) == enc.encode_ordinary(sample) and theirs.eos_token_id == eot
    assert "tokenizer.json" in hf_tokenizer_files(CharTokenizer("abc"), 64)[0]  # every kind: tests/test_hf_tokenizers.py


def test_load_state_reports_a_misfit_as_a_bug():
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20))
    with pytest.raises(RuntimeError):
        hf.load_state(model, {})
    with pytest.raises((UserError, CheckpointError)):
        hf.model_config_from_hf({"model_type": "gpt2", "n_layer": 0}, "x")


def test_gpt2_vocab_imports_as_the_gpt2_tokenizer_samples_and_exports_back(tmp_path, capsys, monkeypatch):
    """A stand-in for GPT-2's vocab.json/merges.txt (the real one needs a download): import writes a gpt2
    tokenizer.json, sample reads it, export writes files transformers' AutoTokenizer reads identically."""
    pytest.importorskip("scratchgpt.tokenizers.gpt2")
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak. " * 20
    ranks = _train_ranks(text, 40)
    vocab, merges = ranks_to_hf(ranks, {"<|endoftext|>": len(ranks)})
    src = tmp_path / "src"
    _hf_model(0.3, n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=len(vocab)).save_pretrained(src)
    (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    monkeypatch.setattr(hf, "is_gpt2_vocab", lambda vocab, merges: True)
    run = tmp_path / "run"
    rc, err = _run_cli(capsys, "import-hf", src, "--out", run)
    assert rc == 0 and "gpt2 tokenizer" in err
    assert json.loads((run / ckpt.TOKENIZER).read_text())["kind"] == "gpt2"
    rc = main(["sample", str(run), "--prompt", "First Citizen", "--max-new-tokens", "10", "--temperature", "0"])
    assert rc == 0 and capsys.readouterr().out.startswith("First Citizen")
    rc, err = _run_cli(capsys, "export", run, "--out", tmp_path / "hf")
    assert rc == 0 and "vocab.json" in err
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text(encoding="utf-8")) == vocab
    ours = ckpt.read_tokenizer(run)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = "Before we proceed, hear me: ünïcødé 123  Speak!\n"
    assert theirs.encode(sample) == ours.encode(sample) and theirs.eos_token_id == len(ranks)


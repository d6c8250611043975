"""Hugging Face GPT-2 checkpoints in and out: config translation and the name/shape mapping of weights.

Owns reading a Hugging Face GPT-2 directory (config.json + model.safetensors, possibly sharded; a hub name
is fetched with huggingface_hub when it is installed and online), turning it into our `ModelConfig` and
state dict (`load_pretrained`), starting training from it (`apply_init_from`), writing a run directory
from it (`import_hf`) and writing a run as a directory `transformers.GPT2LMHeadModel.from_pretrained`
loads (`export_hf`). Does not own training, sampling or the run-directory format (`checkpoint.py`).

The mapping: our module names are GPT-2's without the `transformer.` prefix. GPT-2 uses Conv1D, whose
weight is (in, out), the transpose of nn.Linear's, for attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj.
The head is tied to wte, so a tied checkpoint holds no lm_head.weight. Its "gelu_new" is our "gelu_tanh".
GPT-2's biases are `model.bias = "gpt2"`; our models without some of them (`none`, and the lecture's
key/query/value) export with zero biases, which computes the same function, but GPT-2's head has no bias,
so a model with one (`model.bias = "lecture"`) is refused. Nothing is unpickled:
a directory with only pytorch_model.bin is refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import checkpoint as ckpt
from .. import outputs
from ..config import Config, ConfigError, DataConfig, ModelConfig
from ..errors import CheckpointError, UserError
from ..models import build_model, expected_shapes
from ..schema import MapOf, Str, read_json
from ..tokenizers import Tokenizer
from ..tokenizers.gpt2 import load_gpt2
from .hf_tokenizer import hf_tokenizer_files, is_gpt2_vocab, read_hf_vocab

HUB_NAMES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers that old checkpoints saved
ACT_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
          "relu": "relu"}
ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
LN_EPS = 1e-5  # nn.LayerNorm's default, which our model uses
# with init_from these come from the checkpoint; a recipe that sets one to something else is refused
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "tie_weights", "pos_emb", "norm", "mlp",
              "residual", "qk_norm", "attn_proj", "mlp_proj")


# ---- reading a Hugging Face directory ---------------------------------------------------------------

def resolve_source(name_or_path: str) -> Path:
    """A local directory as is; a hub name (gpt2, gpt2-medium, ...) from the cache or, when online, the hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path not in HUB_NAMES and name_or_path not in HUB_NAMES.values():
        if path.exists():
            raise CheckpointError(f"'{name_or_path}' is a file; pass a Hugging Face GPT-2 directory "
                                  "(config.json + model.safetensors)")
        raise CheckpointError(f"'{name_or_path}' is neither a directory nor one of {', '.join(HUB_NAMES)}")
    hint = (f"download it elsewhere and pass its directory (config.json + model.safetensors) instead of "
            f"'{name_or_path}'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"fetching '{name_or_path}' needs huggingface_hub (pip install 'scratchgpt[hf]'); or "
                        f"{hint}") from None
    repo = HUB_NAMES.get(name_or_path, name_or_path)
    patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                "vocab.json", "merges.txt"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    for local_only in (True, False) if not offline else (True,):
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
        except Exception:  # noqa: BLE001 - offline, refused, absent: all mean "use a local directory"
            continue
    raise UserError(f"could not fetch '{name_or_path}' from the Hugging Face hub (offline?); {hint}")


def read_hf_config(directory: Path) -> dict[str, Any]:
    """config.json of a GPT-2 directory; another architecture or a missing file is a CheckpointError."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{directory}' has no config.json; it is not a Hugging Face model directory")
    hf = read_json(path, f"'{path}' is damaged", CheckpointError, spec=dict)  # its fields: model_config_from_hf
    kind = hf.get("model_type")
    if kind != "gpt2":
        archs = hf.get("architectures")
        arch = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "unknown architecture"
        raise CheckpointError(f"'{directory}' holds a {kind or 'model'} checkpoint ({arch}); only GPT-2 "
                              "(model_type 'gpt2') can be imported")
    return hf


def model_config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """Our ModelConfig for a GPT-2 config.json; anything our model cannot compute is refused by name."""
    def get_int(*keys: str) -> int:
        for key in keys:
            value = hf.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        raise CheckpointError(f"config.json of '{source}' has no positive integer '{keys[0]}'")

    n_layer, n_head, n_embd = get_int("n_layer"), get_int("n_head"), get_int("n_embd")
    n_positions, vocab_size = get_int("n_positions", "n_ctx"), get_int("vocab_size")
    act = hf.get("activation_function", "gelu_new")
    eps = hf.get("layer_norm_epsilon", LN_EPS)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise CheckpointError(f"config.json of '{source}' has a layer_norm_epsilon that is not a number: {eps!r}")
    refusals = [
        (n_embd % n_head != 0, f"n_embd {n_embd} is not divisible by n_head {n_head}"),
        (hf.get("n_inner") not in (None, 4 * n_embd), f"n_inner {hf.get('n_inner')} is not 4 * n_embd"),
        (not isinstance(act, str) or act not in ACT_IN, f"activation_function {act!r} is not one of {', '.join(ACT_IN)}"),
        (not math.isclose(eps, LN_EPS, rel_tol=1e-6), f"layer_norm_epsilon {eps} is not {LN_EPS}"),
        (hf.get("scale_attn_weights", True) is not True, "scale_attn_weights is off"),
        (bool(hf.get("scale_attn_by_inverse_layer_idx", False)), "scale_attn_by_inverse_layer_idx is on"),
        (bool(hf.get("add_cross_attention", False)), "it has cross-attention"),
    ]
    for refused, why in refusals:
        if refused:
            raise CheckpointError(f"'{source}' cannot be imported: its config.json says {why}")
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=n_positions,
                       vocab_size=vocab_size, dropout=0.0, bias="gpt2", tie_weights=bool(hf.get("tie_word_embeddings", True)),
                       pos_emb="learned", norm="layernorm", mlp=ACT_IN[act], residual=True, qk_norm=False,
                       init_from=source)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' is not a valid safetensors file (corrupt or truncated?): {e}") from None


def _hf_weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json names."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        index_json = read_json(index, f"'{index}' is damaged", CheckpointError, spec={"weight_map": MapOf(Str())})
        shards = sorted(set(index_json["weight_map"].values()))
        for shard in shards:
            if Path(shard).name != shard:
                raise CheckpointError(f"'{index}' names a shard outside its directory: {shard!r}")
        return [directory / shard for shard in shards]
    if (directory / "pytorch_model.bin").is_file():
        raise CheckpointError(f"'{directory}' holds only pytorch_model.bin, a pickle, which scratchgpt does not load; "
                              "save it as safetensors first (save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"'{directory}' has no model.safetensors (nor model.safetensors.index.json)")


def read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json names."""
    tensors: dict[str, torch.Tensor] = {}
    for path in _hf_weight_files(directory):
        tensors.update(_load_safetensors(path))
    return tensors


def read_hf_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the files' headers alone (nothing is read into memory)."""
    return {name: shape for path in _hf_weight_files(directory) for name, (shape, _) in ckpt.read_header(path).items()}


def _hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[::-1] if name.endswith(CONV1D) else shape


def _ours(hf_name: str, tied: bool) -> str | None:
    """Our name for a GPT-2 tensor; None for what we do not keep (mask buffers, a tied head)."""
    name = hf_name.removeprefix("transformer.")
    return None if name.endswith(MASK_BUFFERS) or (name == "lm_head.weight" and tied) else name


def check_hf_shapes(shapes: dict[str, tuple[int, ...]], cfg: ModelConfig, source: str) -> None:
    """GPT-2 tensor names and shapes (from the files' headers, or the tensors) against what its config.json
    implies (`checkpoint.check_shapes`: the layer count first, so nothing is built for a damaged n_layer)."""
    ours = {n: _hf_shape(n, shape) for hf_name, shape in shapes.items() if (n := _ours(hf_name, cfg.tie_weights))}
    ckpt.check_shapes(cfg, ours, source, "its config.json")


def state_from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """GPT-2 tensors -> our state dict (float32, Conv1D weights transposed); names and shapes all checked."""
    check_hf_shapes({k: tuple(t.shape) for k, t in tensors.items()}, cfg, source)
    out: dict[str, torch.Tensor] = {}
    for hf_name, t in tensors.items():
        if (name := _ours(hf_name, cfg.tie_weights)) is not None:
            t = t.t() if name.endswith(CONV1D) else t
            out[name] = t.to(torch.float32).contiguous()
    return out


def tokenizer_from_hf(directory: Path) -> Tokenizer | None:
    """Our gpt2 tokenizer, read from the directory's vocab.json, when that is GPT-2's own vocabulary."""
    files = read_hf_vocab(directory)
    if files is None or not is_gpt2_vocab(*files):
        return None
    return load_gpt2(directory / "vocab.json")  # tokenizer.json records this path (see tokenizers/gpt2.py)


def load_pretrained(name_or_path: str) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """(config, our state dict, tokenizer or None) of a GPT-2 hub name or Hugging Face directory."""
    directory = resolve_source(name_or_path)
    cfg = model_config_from_hf(read_hf_config(directory), name_or_path)
    check_hf_shapes(read_hf_shapes(directory), cfg, name_or_path)  # before any tensor is read
    state = state_from_hf(read_hf_tensors(directory), cfg, name_or_path)
    return cfg, state, tokenizer_from_hf(directory)


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a complete state dict (a tied head may be left out) into model."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [n for n in missing if n != "lm_head.weight" or not getattr(model.config, "tie_weights", False)]
    if missing or unexpected:  # state_from_hf checked names already: this is a bug, not a user error
        raise RuntimeError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")


def build_loaded(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model holding state's tensors, built on the meta device: no time goes into a random init that
    would be overwritten (seconds for gpt2-xl)."""
    with torch.device("meta"):
        model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_weights:
        model.lm_head.weight = model.wte.weight  # assign replaced wte's parameter: tie the head again
        missing = [n for n in missing if n != "lm_head.weight"]
    if missing or unexpected or any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise RuntimeError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    return model


# ---- using it: training from it, writing a run directory --------------------------------------------

def apply_init_from(cfg: Config, data_tokenizer: Tokenizer) -> tuple[Config, dict[str, torch.Tensor]]:
    """The run's config with the imported shape (dropout and block_size from the recipe) and the weights."""
    m = cfg.model
    imported, state, tok = load_pretrained(m.init_from)
    defaults = ModelConfig()
    for key in (k for k in SHAPE_KEYS if hasattr(m, k)):
        mine, theirs = getattr(m, key), getattr(imported, key)
        if mine != getattr(defaults, key) and mine != theirs:
            raise ConfigError(f"'model.{key}' is {mine!r} in the recipe but {m.init_from!r} has {theirs!r}; with "
                              "model.init_from the shape comes from the checkpoint, so leave the key out")
    if m.block_size > imported.block_size:
        raise ConfigError(f"'model.block_size' is {m.block_size} but {m.init_from!r} has only "
                          f"{imported.block_size} positions")
    if tok is not None and data_tokenizer.kind != tok.kind:
        raise ConfigError(f"'model.init_from' = {m.init_from!r} reads {tok.kind} tokens but '{cfg.data.dir}' was "
                          f"prepared with the {data_tokenizer.kind} tokenizer; prepare it with --tokenizer {tok.kind}")
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][: m.block_size].clone()  # fewer positions: crop the table
    model_cfg = replace(imported, dropout=m.dropout, block_size=m.block_size, init_from=m.init_from)
    return replace(cfg, model=model_cfg), state


def _check_out(out: Path, kind: outputs.Kind, command: str, force: bool, keep: Path | None = None) -> outputs.Claim:
    """Where `command` may write (`outputs.claim`: new, empty, or its own kind with --force), and never over
    the directory it reads from."""
    if keep is not None:
        o, k = out.resolve(), keep.resolve()
        if o == k or o in k.parents:
            raise UserError(f"--out '{out}' would replace the directory being read ('{keep}'); choose another")
    return outputs.claim(out, kind, command, force=force)


def import_hf(source: str, out: str | Path, force: bool = False) -> tuple[Path, Tokenizer | None]:
    """Write a run directory (config.json, tokenizer.json when known, model.safetensors) from GPT-2 weights."""
    out = Path(out)
    local = Path(source).expanduser()
    target = _check_out(out, outputs.RUN, "import-hf", force, keep=local if local.is_dir() else None)
    model_cfg, state, tok = load_pretrained(source)
    model = build_loaded(model_cfg, state)
    cfg = Config(name=out.name, data=DataConfig(dir=""), model=model_cfg)
    with target.stage() as tmp:
        ckpt.write_run_header(tmp, cfg, tok, model.num_params())
        ckpt.save_weights(tmp / ckpt.MODEL, model, step=0)
    return out, tok


# ---- export -----------------------------------------------------------------------------------------

def check_exportable(m: ModelConfig) -> None:
    """Refuse, by key, a model GPT-2's architecture cannot express (biases off is fine: they export as zeros;
    a bias on the head is not: GPT-2's has none)."""
    defaults = {"arch": "gpt", "pos_emb": "learned", "norm": "layernorm", "residual": True, "qk_norm": False,
                "attn_proj": True, "mlp_proj": True}
    for key, want in defaults.items():
        if hasattr(m, key) and getattr(m, key) != want:
            raise UserError(f"this run cannot be exported as GPT-2: its model.{key} is {getattr(m, key)!r} but "
                            f"GPT-2 needs {want!r}")
    if m.bias == "lecture":
        raise UserError("this run cannot be exported as GPT-2: its model.bias is 'lecture', which gives the LM head "
                        "a bias, and GPT-2's head has none")
    if m.mlp not in ACT_OUT:
        raise UserError(f"this run cannot be exported as GPT-2: its model.mlp is {m.mlp!r}; GPT-2 needs one of "
                        f"{', '.join(ACT_OUT)}")


def hf_config(m: ModelConfig, eot: int | None) -> dict[str, Any]:
    """A GPT2Config as config.json for our model config."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": ACT_OUT[m.mlp],
        "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "n_inner": None,
        "n_positions": m.block_size, "n_ctx": m.block_size, "vocab_size": m.vocab_size,
        "layer_norm_epsilon": LN_EPS, "initializer_range": m.init_std,
        "attn_pdrop": m.dropout, "embd_pdrop": m.dropout, "resid_pdrop": m.dropout, "summary_first_dropout": m.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": m.tie_weights, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": None,
        "use_cache": True, "dtype": "float32", "torch_dtype": "float32",
    }


def state_to_hf(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> GPT-2's names (Conv1D weights transposed; absent biases as zeros; tied head left out)."""
    full = {name: torch.zeros(shape) for name, shape in expected_shapes(replace(m, bias="gpt2")).shapes.items()
            if name.endswith(".bias")}  # zero biases compute what no biases do
    full.update({k: v.detach().to("cpu", torch.float32) for k, v in state.items()})
    out = {}
    for name, t in full.items():
        if name == "lm_head.weight" and m.tie_weights:
            continue  # transformers ties it to wte on load
        t = t.t() if name.endswith(CONV1D) else t
        out[name if name == "lm_head.weight" else f"transformer.{name}"] = t.contiguous().clone()
    return out


def export_hf(run_dir: str | Path, out: str | Path, which: str = "best", force: bool = False) -> tuple[Path, str]:
    """Write run_dir as a directory transformers.GPT2LMHeadModel.from_pretrained loads; return it and a note
    on the tokenizer. The directory appears whole or not at all."""
    run, out = Path(run_dir), Path(out)
    cfg = ckpt.read_config(run)
    target = _check_out(out, outputs.EXPORT, "export", force, keep=run)
    check_exportable(cfg.model)
    try:
        tok = ckpt.read_tokenizer(run)
    except CheckpointError:
        tok = None
    path = ckpt.weights_path(run, which)
    ckpt.check_weights_file(cfg.model, path, run / ckpt.CONFIG)  # from the header: nothing built yet
    model = build_model(cfg.model)
    ckpt.load_weights(path, model)
    files, note = hf_tokenizer_files(tok, cfg.model.block_size)
    eot = tok.eot_token if files is not None and "tokenizer.json" in files else None
    tensors = state_to_hf(model.state_dict(), cfg.model)
    with target.stage() as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg.model, eot), indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, body in (files or {}).items():
            if isinstance(body, bytes):
                (tmp / name).write_bytes(body)
            else:
                (tmp / name).write_text(body, encoding="utf-8")
    return out, note


__all__ = ["HUB_NAMES", "apply_init_from", "build_loaded", "export_hf", "import_hf", "load_pretrained", "load_state",
           "state_from_hf", "state_to_hf"]

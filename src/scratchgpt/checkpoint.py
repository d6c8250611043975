"""The run directory: the contract between training, sampling, serving and export.

Owns the on-disk format (below), atomic writes of every file, and loading with validation. A file that is
missing, truncated, corrupt, not a safetensors file (a pickle, say) or of the wrong shape is a
`CheckpointError`; nothing here unpickles anything. Does not decide when to save (`train.py` does).

    runs/<name>/
      config.json                 resolved config, format version, package version, parameter count
      tokenizer.json              the tokenizer's to_json()
      model.safetensors           last weights          model-best.safetensors   best by val loss
      trainer_state.safetensors   everything to resume exactly, in one file: weights, optimizer tensors,
                                  RNG states; its metadata holds the step, best val loss and param groups
      trainer_state.json          a readable copy of that metadata (written after the .safetensors)
      metrics.jsonl, loss.png     written by training

Resume reads `trainer_state.safetensors` alone, so a crash between two files never pairs weights of one
step with optimizer state of another.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .chat import chat_tokenizer
from .config import Config, ConfigError, apply_overrides, from_dict, to_dict
from .errors import CheckpointError
from .fileio import atomic_path, atomic_write_json
from .memory import check_weights
from .models import ModelConfig, build_model, expected_shapes
from .schema import Int, Str, check, read_json
from .tokenizers import Tokenizer, tokenizer_from_json

FORMAT_VERSION = 1
CONFIG, TOKENIZER = "config.json", "tokenizer.json"
# the JSON a run holds, as schema.check reads them (config.json's "config" is then config.from_dict's)
RUN_CONFIG = {"format_version": int, "config": dict}
TOKENIZER_JSON = {"kind": Str()}
TRAINER_INFO = {"step": Int(0), "best_val": float, "param_groups": list}
MODEL, MODEL_BEST = "model.safetensors", "model-best.safetensors"
STATE, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


def _unique_state(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict without tied duplicates (safetensors refuses shared storage), contiguous, on CPU.

    A tied matrix appears under two names over one piece of memory; it is kept under its first name. Tensors
    are told apart by where their values live (device, address, dtype, shape, strides), compared as a whole,
    so two distinct tensors can never be taken for one."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, t in model.state_dict().items():
        where = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and where in seen:
            continue
        seen.add(where)
        out[prefix + name] = t.detach().to("cpu").contiguous()
    return out


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Around reading a safetensors file: a missing file, and every failure inside (safetensors', the system's),
    is one clear CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' is missing")
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' is not a valid safetensors checkpoint (corrupt or truncated?): {e}") from None


def _safe_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata, mapping every failure to one clear CheckpointError."""
    with _reading(path):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype in a safetensors file, from its header alone: no tensor is read."""
    with _reading(path), safe_open(str(path), framework="pt") as f:
        out = {}
        for name in f.keys():
            piece = f.get_slice(name)
            out[name] = (tuple(piece.get_shape()), piece.get_dtype())
        return out


_LAYER = re.compile(r"h\.(\d+)\.")
_FLOATS = ("F64", "F32", "F16", "BF16")


def check_shapes(m: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str, config: str) -> None:
    """Refuse (one CheckpointError) weights whose names or shapes are not those of the model `config` (a phrase
    naming the config) describes, before anything is built or allocated: the layer count first, from the names
    alone (so a damaged n_layer = 100000 costs nothing), then every name and shape against the model built on
    the meta device."""
    if m.arch == "gpt":
        n = len({int(x.group(1)) for name in shapes if (x := _LAYER.match(name))})
        if m.n_layer > n:
            raise CheckpointError(f"'{where}' lacks layer {n} ('h.{n}.*'): {config} says n_layer = {m.n_layer:,} but "
                                  f"the weights hold {n} layer{'s' if n != 1 else ''}; the config does not match them")
    state = expected_shapes(m)
    expected = state.shapes
    for name, shape in shapes.items():
        if name not in expected:
            raise CheckpointError(f"'{where}' holds '{name}', which the model of {config} does not have: the model "
                                  "shape does not match")
        if expected[name] != shape:
            raise CheckpointError(f"'{where}' does not match {config}: '{name}' is {shape} in the weights but "
                                  f"{expected[name]} in the config")
    missing = [name for name in expected if name not in shapes and name not in state.tied]
    if missing:
        raise CheckpointError(f"'{where}' lacks '{missing[0]}' that {config} implies: the model shape does not match")


def check_weights_file(m: ModelConfig, path: Path, config_path: Path, prefix: str = "") -> None:
    """A weights file (or the `prefix`ed tensors of a trainer state) checked against its run's config.json from
    the file's header alone, before any model is built or memory allocated (`check_shapes`)."""
    shapes = {}
    for name, (shape, dtype) in read_header(path).items():
        if name.startswith(prefix):
            if dtype not in _FLOATS:
                raise CheckpointError(f"'{path}' holds '{name}' as {dtype}, not as floating-point weights")
            shapes[name[len(prefix):]] = shape
    check_shapes(m, shapes, str(path), f"'{config_path}'")


def save_weights(path: str | Path, model: nn.Module, step: int) -> None:
    with atomic_path(path) as tmp:
        save_file(_unique_state(model), str(tmp), metadata={"format": str(FORMAT_VERSION), "step": str(step)})


def read_step(path: str | Path) -> int | None:
    """The training step a weights file was saved at (from its metadata), or None when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", 0))
    except (SafetensorError, OSError, ValueError):
        return None


def load_weights(path: str | Path, model: nn.Module) -> int:
    """Load weights into model (shapes checked); return the step they were saved at."""
    tensors, meta = _safe_load(Path(path))
    _assign(model, tensors, Path(path))
    return int(meta.get("step", 0))


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    for name, t in tensors.items():
        if name not in own:
            raise CheckpointError(f"'{path}' holds '{name}', which this model does not have: the model shape does not match")
        if own[name].shape != t.shape:
            raise CheckpointError(
                f"'{path}' does not match the model: '{name}' is {tuple(t.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the config"
            )
    missing = [n for n in _unique_state(model) if n not in tensors]
    if missing:
        raise CheckpointError(f"'{path}' lacks '{missing[0]}': the model shape does not match")
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t)


def write_run_header(run_dir: str | Path, cfg: Config, tokenizer: Tokenizer | None, n_params: int) -> None:
    """config.json and tokenizer.json: what sampling needs besides weights (no tokenizer: an import without one)."""
    run = Path(run_dir)
    if tokenizer is not None:
        atomic_write_json(run / TOKENIZER, tokenizer.to_json())
    atomic_write_json(run / CONFIG, {
        "format_version": FORMAT_VERSION, "package_version": __version__, "n_params": n_params, "config": to_dict(cfg),
    })


def read_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    run = Path(run_dir)
    if not run.is_dir() or not (run / CONFIG).is_file():
        if (run / "metrics.jsonl").is_file():  # config.json comes with a run's first complete checkpoint
            raise CheckpointError(f"'{run}' holds no checkpoint yet: the run training there has not completed its "
                                  "first one (if it was killed, start it again, without --resume)")
        raise CheckpointError(f"'{run}' is not a run directory (no {CONFIG}); pass a directory `scratchgpt train` wrote")
    raw = read_json(run / CONFIG, f"'{run / CONFIG}' is damaged", CheckpointError, spec=RUN_CONFIG)
    if raw["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"'{run / CONFIG}' has format {raw['format_version']!r}; this version reads {FORMAT_VERSION}")
    try:
        return from_dict(apply_overrides(raw["config"], overrides or []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"'{run / CONFIG}' is damaged") from None
    except ConfigError as e:
        if overrides:
            raise
        raise CheckpointError(f"'{run / CONFIG}' is damaged: {e}") from None


def read_tokenizer_json(run_dir: str | Path) -> dict[str, Any]:
    """tokenizer.json as written (one sentence naming the file when it is missing or damaged)."""
    path = Path(run_dir) / TOKENIZER
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' has no {TOKENIZER}")
    return read_json(path, f"'{path}' is damaged", CheckpointError, spec=TOKENIZER_JSON)


def read_tokenizer(run_dir: str | Path) -> Tokenizer:
    raw = read_tokenizer_json(run_dir)
    try:
        return tokenizer_from_json(raw)
    except CheckpointError as e:
        raise CheckpointError(f"'{Path(run_dir) / TOKENIZER}' is damaged: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"'{Path(run_dir) / TOKENIZER}' is damaged") from None


def weights_path(run_dir: str | Path, which: str = "best") -> Path:
    """The weights file of a run: `which` is best (model-best.safetensors, else the last weights) or last."""
    if which not in ("best", "last"):
        raise CheckpointError(f"which weights: 'best' or 'last', got {which!r}")
    run = Path(run_dir)
    return run / MODEL_BEST if which == "best" and (run / MODEL_BEST).is_file() else run / MODEL


def load_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer, Config]:
    """Model (eval mode), tokenizer and config of a run; `which` is best (falls back to last) or last."""
    run = Path(run_dir)
    cfg = read_config(run)
    tok = read_tokenizer(run)
    check_tokenizer_fits(tok.vocab_size, cfg.model.vocab_size, run / TOKENIZER)
    path = weights_path(run, which)
    check_weights_file(cfg.model, path, run / CONFIG)  # config.json against the weights' header: nothing built
    check_weights(cfg.model, torch.device(device))  # refuse what cannot fit before anything is allocated
    model = build_model(cfg.model)
    load_weights(path, model)
    return model.to(device).eval(), tok, cfg


# ---- trainer state ----------------------------------------------------------------------------------

def save_trainer_state(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """One file with everything to resume: weights, optimizer tensors, RNG tensors; JSON info in metadata."""
    run = Path(run_dir)
    sd = optimizer.state_dict()
    out = _unique_state(model, prefix="model.")
    for idx, state in sd["state"].items():
        for key, value in state.items():
            out[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    for key, value in tensors.items():
        out[f"extra.{key}"] = value.detach().to("cpu").contiguous()
    info = {**info, "format": FORMAT_VERSION, "param_groups": sd["param_groups"]}
    with atomic_path(run / STATE) as tmp:
        save_file(out, str(tmp), metadata={"info": json.dumps(info)})
    atomic_write_json(run / STATE_JSON, {k: v for k, v in info.items() if k != "param_groups"})


def read_trainer_info(run_dir: str | Path) -> dict[str, Any]:
    """The trainer state's info (step, best val, elapsed...) from the header of trainer_state.safetensors alone:
    the file resume reads, not its readable copy, which may be older or damaged."""
    path = Path(run_dir) / STATE
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["info"])
    except (SafetensorError, OSError, ValueError, KeyError):
        raise CheckpointError(f"'{path}' is missing or not a scratchgpt trainer state") from None
    return check(info, TRAINER_INFO, f"'{path}' is not a scratchgpt trainer state", CheckpointError)


def load_trainer_state(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return the extra tensors (RNG states) and the info dict."""
    path = Path(run_dir) / STATE
    tensors, meta = _safe_load(path)
    try:
        info = json.loads(meta["info"])
    except (KeyError, ValueError):
        raise CheckpointError(f"'{path}' has no trainer metadata; it is not a scratchgpt trainer state") from None
    check(info, TRAINER_INFO, f"'{path}' is not a scratchgpt trainer state", CheckpointError)
    _assign(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' does not match this model's optimizer: {e}") from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return extra, info


def check_tokenizer_fits(tokenizer_vocab: int, model_vocab: int, tokenizer_path: Path) -> None:
    """A tokenizer may have fewer ids than the model's embedding (the rest is padding), never more: its
    extra ids would index past the table."""
    if tokenizer_vocab > model_vocab:
        raise CheckpointError(f"'{tokenizer_path}' has {tokenizer_vocab:,} tokens but the weights have a vocabulary of "
                              f"{model_vocab:,}; the tokenizer must have at most as many tokens as the model")


def resolved_model_config(cfg: Config, vocab_size: int) -> Config:
    """Fill model.vocab_size from the data (or check a recipe's explicit value covers it: a larger one is
    padding, a smaller one is refused)."""
    m = cfg.model
    if m.vocab_size == 0:
        return replace(cfg, model=replace(m, vocab_size=vocab_size))
    if m.vocab_size < vocab_size:
        raise ConfigError(f"'model.vocab_size' is {m.vocab_size:,} but the data's tokenizer has {vocab_size:,} tokens; "
                          f"it must be at least {vocab_size:,} (or 0 to take it from the data)")
    return cfg


# ---- starting from another run (fine-tuning) ---------------------------------------------------------------

def is_run_dir(path: str | Path) -> bool:
    """Whether path is a run directory (it has config.json), as opposed to a Hugging Face name or directory."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / TOKENIZER).is_file()


def init_from_run(cfg: Config, data_tokenizer: Tokenizer) -> tuple[Config, dict[str, torch.Tensor]]:
    """Start cfg from the run `model.init_from` names: its model shape (the recipe keeps model.dropout and a
    model.block_size of at most the run's), its best weights, and room for the tokens the data's tokenizer
    adds to the run's (a chat template's special tokens): their embedding rows (and head rows) start at the
    mean of the others, so a new token starts as an average one. The data must be tokenized with the run's
    tokenizer, or with it plus the chat template."""
    m, src = cfg.model, Path(cfg.model.init_from)
    base = read_config(src)
    if base.model.arch != "gpt":
        raise ConfigError(f"'model.init_from' = '{src}' is a {base.model.arch} run; fine-tuning needs a gpt run")
    run_tok = read_tokenizer(src)
    if data_tokenizer.to_json() not in (run_tok.to_json(), chat_tokenizer(run_tok).to_json()):
        raise ConfigError(f"'{cfg.data.dir}' was not tokenized with the tokenizer of '{src}' (its {data_tokenizer.kind} "
                          f"tokenizer has {data_tokenizer.vocab_size:,} tokens, the run's {run_tok.kind} one "
                          f"{run_tok.vocab_size:,}); prepare it from the run: `scratchgpt prepare chat --run {src}`")
    if m.block_size == ModelConfig().block_size:  # left at its default: the run's own context
        m = replace(m, block_size=base.model.block_size)
    if m.block_size > base.model.block_size:
        raise ConfigError(f"'model.block_size' is {m.block_size} but '{src}' has only {base.model.block_size} positions")
    check_weights_file(base.model, weights_path(src, "best"), src / CONFIG)
    model = build_model(base.model)
    load_weights(weights_path(src, "best"), model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grow = max(data_tokenizer.vocab_size, m.vocab_size) - base.model.vocab_size
    if grow > 0:
        for key in ("wte.weight", "lm_head.weight", "lm_head.bias"):
            if key in state:  # a tied head is the same matrix: grown alike
                t = state[key]
                state[key] = torch.cat([t, t.mean(dim=0, keepdim=True).expand(grow, *t.shape[1:])])
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][: m.block_size].clone()  # fewer positions: crop the table
    model_cfg = replace(base.model, dropout=m.dropout, block_size=m.block_size, init_from=m.init_from,
                        vocab_size=base.model.vocab_size + max(grow, 0), attention=m.attention)
    return replace(cfg, model=model_cfg), state

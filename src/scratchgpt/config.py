"""Typed configuration: recipes in TOML, dotted command-line overrides, validation with suggestions.

Owns `DataConfig`, `ModelConfig`, `TrainConfig` and `Config` (frozen dataclasses), loading a recipe,
applying `--section.key=value` overrides, and turning a config to and from plain dicts (for
`config.json`). An unknown key or a wrong type is a `ConfigError` naming the key and the closest valid
one. Does not own devices, models or files other than the recipe it is asked to read.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, closest
from .limits import MAX_BATCH, MAX_THREADS, NOT_NEGATIVE, POSITIVE, UINT64_MAX, UNIT_OPEN, Range, floats, ints
from .models import ModelConfig
from .recipes import find as find_recipe


@dataclass(frozen=True)
class DataConfig:
    dir: str = "data/shakespeare_char"  # a directory written by `scratchgpt prepare`
    # text: windows of a token stream; chat: whole conversations, the loss on the assistants' replies only
    # (`scratchgpt prepare chat`), usually with model.init_from = a run to fine-tune
    format: Literal["text", "chat"] = "text"


@dataclass(frozen=True)
class TrainConfig:
    max_iters: int = 5000
    batch_size: int = 64
    grad_accum_steps: int = 1
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay over max_iters
    lr_schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"  # wsd: flat, then linear over cooldown_frac
    cooldown_frac: float = 0.4  # wsd: the share of the decay span spent cooling down to min_lr at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 200  # random batches per split per evaluation
    eval_at_start: bool = False  # also evaluate the untrained model (step 0)
    full_val: bool = False  # evaluate val on every window of the split instead of eval_iters batches
    eval_batch_size: int = 0  # 0: same as batch_size
    log_interval: int = 10
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: bf16 autocast on CUDA and CPUs with native bf16, fp32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    time_limit: float = 0.0  # seconds from launch after which training stops (0: none)
    schedule_by_time: bool = False  # decay the lr over time_limit too, so it ends by the deadline (rank 0's clock)
    stop_val_loss: float = 0.0  # stop at the first evaluation whose val loss is at most this (0: never)
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' weight matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak lr; it follows the same warmup and decay as learning_rate
    muon_momentum: float = 0.95
    peak_flops: float = 0.0  # one device's peak FLOP/s (e.g. 989e12: H100 dense bf16) for MFU per device; 0: none
    dist_timeout: float = 300.0  # seconds any collective (and the rendezvous) may wait for the other ranks
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state over the ranks (FSDP2)
    out_dir: str = ""  # default: default_run_dir (runs/<data>_<recipe>, or runs/<recipe> when that names the data)


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# Values a key once took that still load (config.json files of older runs): model.bias was a bool.
LEGACY: dict[str, dict[bool, str]] = {"model.bias": {False: "none", True: "gpt2"}}

# Every number a recipe can set, with its allowed range (a test checks that none is missing). Floats must also
# be finite. Sizes are capped where a larger value is a typo rather than a model: the memory estimate
# (`memory.py`) refuses what is in range but does not fit the machine.
RANGES: dict[str, Range] = {
    "model.n_layer": ints(1, 100_000),
    "model.n_head": ints(1, 100_000),
    "model.n_embd": ints(1, 2**20),
    "model.block_size": ints(1, 2**24),
    "model.vocab_size": ints(0, 2**32),  # 0: from the data; ids are stored as at most uint32
    "model.dropout": UNIT_OPEN,
    "model.rope_base": POSITIVE,
    "model.init_std": POSITIVE,
    "train.max_iters": ints(0),
    "train.batch_size": ints(1, MAX_BATCH),
    "train.grad_accum_steps": ints(1, 2**20),
    "train.learning_rate": POSITIVE,
    "train.min_lr": NOT_NEGATIVE,
    "train.warmup_iters": ints(0),
    "train.lr_decay_iters": ints(0),
    "train.cooldown_frac": floats(0.0, 1.0, lo_open=True),
    "train.weight_decay": NOT_NEGATIVE,
    "train.beta1": UNIT_OPEN,
    "train.beta2": UNIT_OPEN,
    "train.grad_clip": NOT_NEGATIVE,
    "train.eval_interval": ints(1),
    "train.eval_iters": ints(1, 2**32),
    "train.eval_batch_size": ints(0, MAX_BATCH),
    "train.log_interval": ints(1),
    "train.seed": ints(-(2**63), UINT64_MAX),  # what torch.manual_seed takes
    "train.threads": ints(0, MAX_THREADS),
    "train.time_limit": NOT_NEGATIVE,
    "train.stop_val_loss": NOT_NEGATIVE,
    "train.muon_lr": POSITIVE,
    "train.muon_momentum": UNIT_OPEN,
    "train.peak_flops": NOT_NEGATIVE,
    "train.dist_timeout": floats(0.0, 365 * 86400.0, lo_open=True),  # a timedelta; a year is already absurd
}


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# The allowed values of every choice key, derived from the fields' Literal types (the model's are declared in
# models/gpt.py next to the modules they select)
CHOICES: dict[str, tuple[str, ...]] = {
    f"{section}.{name}": typing.get_args(typ) for section, cls in SECTIONS.items()
    for name, typ in _field_types(cls).items() if typing.get_origin(typ) is Literal
}


def _check_value(key: str, value: Any, typ: type) -> Any:
    """Return value converted to typ (int -> float allowed), or raise naming the key."""
    if isinstance(typ, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if key in LEGACY and isinstance(value, bool):
        value = LEGACY[key][value]
    if typing.get_origin(typ) is Literal:
        typ = str  # and one of CHOICES[key], checked below
    ok = (
        (typ is bool and isinstance(value, bool))
        or (typ is int and isinstance(value, int) and not isinstance(value, bool))
        or (typ is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (typ is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"'{key}' must be {typ.__name__}, got {type(value).__name__} {value!r}")
    value = float(value) if typ is float else value
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"'{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}{closest(value, CHOICES[key])}")
    return value


def _suggest_key(key: str) -> str:
    """The closest valid dotted key, compared within its section when that exists: the shared 'train.'
    prefix would otherwise make any key in it look close to some other."""
    section, _, name = key.partition(".")
    elsewhere = [s for s, c in SECTIONS.items() if name in _field_types(c)]
    if elsewhere:  # the right key in the wrong section
        return f" (did you mean '{elsewhere[0]}.{name}'?)"
    if section in SECTIONS and "." not in name:
        return closest(name, _field_types(SECTIONS[section]), prefix=f"{section}.")
    return closest(key, [f"{s}.{f}" for s, c in SECTIONS.items() for f in _field_types(c)])


def _section(name: str, raw: dict[str, Any], cls: type) -> Any:
    types_ = _field_types(cls)
    values = {}
    for key, value in raw.items():
        if key not in types_:
            raise ConfigError(f"unknown key '{name}.{key}'{_suggest_key(f'{name}.{key}')}")
        values[key] = _check_value(f"{name}.{key}", value, types_[key])
    return cls(**values)


def from_dict(raw: dict[str, Any], name: str | None = None) -> Config:
    """Build a validated Config from nested dicts like a parsed recipe."""
    raw = dict(raw)
    name = raw.pop("name", name or "run")
    if not isinstance(name, str):
        raise ConfigError(f"'name' must be str, got {type(name).__name__}")
    sections = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"unknown section '{key}'{closest(key, list(SECTIONS) + ['name'])}")
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a table of keys, got {type(value).__name__}")
        sections[key] = _section(key, value, SECTIONS[key])
    cfg = Config(name=name, **sections)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(arg: str) -> tuple[str, Any]:
    """'--train.max_iters=2000' -> ('train.max_iters', 2000); values parse as TOML, else as strings."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body:
        raise ConfigError(f"override '{arg}' must look like --section.key=value")
    key, text = body.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare words such as cpu or rope
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of raw with each dotted override set (validated later by from_dict)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for arg in overrides:
        key, value = parse_override(arg)
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in _field_types(SECTIONS[parts[0]]):
            raise ConfigError(f"unknown key '{key}'{_suggest_key(key)}")
        raw.setdefault(parts[0], {})[parts[1]] = value
    return raw


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML recipe (a file, or a named recipe: `recipes.find`), apply overrides, validate. The run's name
    defaults to the file's stem."""
    path = find_recipe(recipe)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe '{path}' is not valid TOML: {e}") from None
    return from_dict(apply_overrides(raw, overrides or []), name=path.stem)


def default_run_dir(cfg: Config) -> Path:
    """Where a run goes unless told: named after what it trains on. `runs/<recipe>` when the recipe's name
    already contains its data directory's name (shakespeare_char_cpu on data/shakespeare_char), else
    `runs/<data>_<recipe>` (bigram -> runs/shakespeare_char_bigram; shakespeare_char_cpu on data/python ->
    runs/python_shakespeare_char_cpu)."""
    data = Path(cfg.data.dir).name
    return Path("runs") / (cfg.name if not data or data in cfg.name else f"{data}_{cfg.name}")


def validate(cfg: Config) -> None:
    """The range of every number (RANGES), then cross-field checks that a type alone cannot express."""
    m, t = cfg.model, cfg.train
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not allowed.contains(value):
            raise ConfigError(allowed.refusal(f"'{key}'", value))
    if m.init_from and m.arch != "gpt":
        raise ConfigError(f"'model.init_from' needs model.arch = gpt, got {m.arch!r}")
    if m.arch == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"'model.n_embd' ({m.n_embd}) must be divisible by 'model.n_head' ({m.n_head})")
    if m.pos_emb == "rope" and (m.n_embd // m.n_head) % 2:
        raise ConfigError("'model.pos_emb' = rope needs an even head size (n_embd / n_head)")
    if t.schedule_by_time and t.time_limit <= 0:
        raise ConfigError("'train.schedule_by_time' needs 'train.time_limit' (seconds) to decay the lr over")
    if t.optimizer == "muon" and t.fsdp:
        raise ConfigError("'train.fsdp' shards every matrix over the ranks and Muon needs whole matrices; "
                          "use train.optimizer = adamw with FSDP, or DDP (train.fsdp = false) with Muon")
    if t.optimizer == "muon" and m.arch != "gpt":
        raise ConfigError(f"'train.optimizer' = muon needs the blocks' weight matrices, and model.arch = {m.arch} has "
                          "none; use train.optimizer = adamw")

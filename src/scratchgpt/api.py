"""The Python API a notebook reaches for: `model = scratchgpt.load(run_dir)`, then `model.generate(...)`.

Owns `LoadedModel` (a trained run's model, tokenizer and config with one generation engine, so caches
and CUDA graphs are reused across calls; `score(text)` for log-probabilities) and `load`. Sampling settings
are keyword arguments: `max_new_tokens`, `temperature` (0 is greedy), `top_k`, `top_p`, `stop` (a string or
several), `seed`, `ignore_eos`, `skip_special_tokens` (default true: special tokens add no text). Does not own checkpoint loading (`checkpoint.py`), generation (`generate.py`) or scoring (`evaluate.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from . import runtime
from .checkpoint import load_model
from .config import Config
from .errors import UserError
from .evaluate import TextScore, score_text
from .generate import Engine
from .sampling import SamplingSettings, settings_from


class LoadedModel:
    """A run ready to generate. `generate` returns text; `stream` yields it piece by piece as it comes."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: Config, *, cuda_graphs: bool = True,
                 compile: bool = False, **defaults):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.engine = Engine(model, tokenizer, cuda_graphs=cuda_graphs, compile=compile)
        self.defaults = settings_from(None, **defaults)  # per-call keywords override these

    def generate(self, prompt: str | list[str] = "", *, num_samples: int = 1, **settings) -> str | list[str]:
        """The continuation of `prompt` (the prompt is not repeated). A list of prompts, or `num_samples` > 1,
        gives a list: all samples of the first prompt, then of the next (one batch, one prefill per prompt)."""
        return self.engine.generate(prompt, settings_from(self.defaults, **settings), num_samples)

    def stream(self, prompt: str = "", **settings) -> Iterator[str]:
        """Yield the continuation piece by piece: `for piece in model.stream("ROMEO:"): print(piece, end="")`."""
        return self.engine.stream(prompt, settings_from(self.defaults, **settings))

    def chat(self, messages: list[dict], *, num_samples: int = 1, **settings) -> str | list[str]:
        """The assistant's reply to OpenAI-style messages (`[{"role": "user", "content": "hi"}]`), through the
        chat template of a run fine-tuned on conversations; a list for `num_samples` > 1."""
        return self.engine.chat(messages, settings_from(self.defaults, **settings), num_samples)

    def score(self, text: str, *, stride: int | None = None, batch_size: int = 8) -> TextScore:
        """How well the model predicts `text`: `tokens`, `token_logprobs` (ln p of each token after the first),
        `loss`, `perplexity`, `bits_per_byte` (windows and figures as `scratchgpt eval`: `scratchgpt.evaluate`)."""
        return score_text(self.model, self.tokenizer, text, self.config.model.block_size, stride, batch_size)

    def settings(self, **settings) -> SamplingSettings:
        """The settings a call with these keywords would use (validated)."""
        return settings_from(self.defaults, **settings)

    def __repr__(self) -> str:
        m = self.config.model
        return (f"LoadedModel({self.config.name!r}: {m.arch}, {m.n_layer} layers, {m.n_embd} wide, block {m.block_size}, "
                f"vocab {m.vocab_size}, on {self.engine.device})")


def load(run_dir: str | Path, which: str = "best", device: str = "cpu", dtype: str = "auto",
         cuda_graphs: bool = True, threads: int = 0, compile: bool | str = False, quantize: str = "none",
         **defaults) -> LoadedModel:
    """Load a run directory written by `scratchgpt train`. `device` is cpu | cuda | mps | auto; `dtype` auto
    follows the precision policy for inference (`runtime.POLICY`: docs/precision.md); `threads` sets the CPU
    threads (0: torch's default); `compile` runs the decode step through torch.compile (the first call of
    each batch size compiles it); `quantize` "int8" stores every matrix as int8 with a scale per output channel
    (a quarter of fp32's bytes to read per token: `quantize.py`). Extra keywords become default sampling
    settings."""
    if which not in ("best", "last"):
        raise UserError(f"which must be 'best' or 'last', got {which!r}")
    compile = {"on": True, "off": False}.get(compile, compile) if isinstance(compile, str) else compile
    if not isinstance(compile, bool):
        raise UserError(f"compile must be true or false (or on / off), got {compile!r}")
    rt = runtime.setup(device, dtype, threads=threads, compile=compile, use="infer", quantize=quantize)
    model, tok, cfg = load_model(run_dir, which=which, device=rt.device)
    model = rt.prepare(model)
    return LoadedModel(model, tok, cfg, cuda_graphs=cuda_graphs, compile=rt.compile, **defaults)

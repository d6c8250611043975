"""scratchgpt: GPT from scratch, from a char-level model on a laptop CPU to GPT-2 on many GPUs.

Importing the package has no side effects; submodules are imported where they are used.
"""

__version__ = "0.1.0"


def load(run_dir, **kwargs):
    """Load a trained run for generation: `model = scratchgpt.load("runs/x")`, then `model.generate("ROMEO:")`
    or `for piece in model.stream("ROMEO:"): ...`. Keywords: which, device, dtype, cuda_graphs, and default
    sampling settings (see `scratchgpt.api.load`). Imports torch only when called."""
    from .api import load as _load

    return _load(run_dir, **kwargs)

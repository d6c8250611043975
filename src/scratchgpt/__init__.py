"""scratchgpt: GPT from scratch, from a char-level model on a laptop CPU to GPT-2 on many GPUs.

Importing the package has no side effects; submodules are imported where they are used.
"""

__version__ = "0.1.0"

"""`python -m scratchgpt ...`: the same as the `scratchgpt` command (`cli.py`)."""

import sys

from .cli import main

sys.exit(main())

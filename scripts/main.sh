#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare tiny Shakespeare, train the recipe that fits the machine,
# sample. The corpus comes from $SCRATCHGPT_TINYSHAKESPEARE when set, else it is downloaded.
set -euo pipefail
. "$(dirname "$0")/venv.sh"
if python -c 'import torch' 2>/dev/null; then :;
elif command -v nvidia-smi >/dev/null 2>&1; then python -m pip install -q torch;   # a CUDA build
else python -m pip install -q "torch==2.13.0"; fi                                 # the CPU build
python -m pip install -q -e .
scratchgpt prepare shakespeare_char ${SCRATCHGPT_TINYSHAKESPEARE:+--input "$SCRATCHGPT_TINYSHAKESPEARE"}
if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then recipe=shakespeare_char
else recipe=shakespeare_char_cpu; fi
scratchgpt train "$recipe"                  # a named recipe (scratchgpt recipes lists them)
scratchgpt sample "runs/$recipe" --max-new-tokens 500 --seed 1337

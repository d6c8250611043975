#!/usr/bin/env bash
# The chat demo from a clone: `scratchgpt demo chat` (src/scratchgpt/chat_demo.py) writing into the clone's data/
# and runs/. Ends with the line `held-out accuracy: base X%, chat Y%`. Extra arguments go to the command.
# Needs `scratchgpt` on PATH (pip install -e ., or activate .venv). The corpus: $SCRATCHGPT_TINYSHAKESPEARE,
# else ../shared/data/tinyshakespeare/input.txt, else data/shakespeare_char/input.txt, else downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v scratchgpt >/dev/null || { echo "error: scratchgpt is not on PATH; pip install -e . (or activate .venv)" >&2; exit 2; }
shared=../shared/data/tinyshakespeare/input.txt
if [ -z "${SCRATCHGPT_TINYSHAKESPEARE:-}" ] && [ -f "$shared" ]; then export SCRATCHGPT_TINYSHAKESPEARE=$shared; fi
exec scratchgpt demo chat "$@"

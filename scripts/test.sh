#!/usr/bin/env bash
# Sets up a virtual environment (CPU PyTorch) with the dev extras and runs the test suite.
# The corpus comes from $SCRATCHGPT_TINYSHAKESPEARE (tests that need it skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"          # the CPU build; an unpinned torch pulls a multi-GB CUDA build
python -m pip install -q -e ".[dev]"
python -m pytest -q "$@"

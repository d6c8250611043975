#!/usr/bin/env bash
# Sets up a virtual environment (CPU PyTorch) with the dev extras and runs the test suite.
# The corpus comes from $SCRATCHGPT_TINYSHAKESPEARE (tests that need it skip without it).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
python -m pip install -q "torch==2.13.0"          # the CPU build; an unpinned torch pulls a multi-GB CUDA build
python -m pip install -q -e ".[dev]"
# The playground's browser test drives Debian's Chromium (Playwright cannot download its own offline).
if [ -z "${SCRATCHGPT_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "note: could not install chromium; the browser test will skip" >&2
    else
        echo "note: no chromium and not root with apt-get; the browser test will skip" >&2
    fi
fi
python -m pytest -q "$@"
# The precision policy has two CPU branches (native bf16 or not): run the tests that depend on it again with
# the switch forced to the branch this machine does not take, so both pass wherever the suite runs.
other=$(python -c "from scratchgpt.runtime import cpu_has_native_bf16 as n; print(0 if n() else 1)")
echo "again with SCRATCHGPT_NATIVE_BF16=$other: the precision policy's other branch" >&2
SCRATCHGPT_NATIVE_BF16=$other python -m pytest -q -m precision "$@" || [ $? -eq 5 ]  # 5: none of them selected

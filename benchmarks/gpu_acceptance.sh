#!/usr/bin/env bash
# GPU acceptance in one command (issue 13), from a fresh clone on one H100 / H200 with a CUDA torch installed:
#     bash benchmarks/gpu_acceptance.sh                 # all checks, under 8 minutes, one table printed last
#     bash benchmarks/gpu_acceptance.sh --only decode   # some of them (see benchmarks/gpu_acceptance.py --help)
# The checks, their bars and what is measured: benchmarks/gpu_acceptance.py's docstring, docs/benchmarks.md.
# Without a GPU: one line on stderr, exit 2. If the package or the gpu tests' needs (pytest, hypothesis) do not
# import, installs them (`pip install -e . pytest hypothesis`) with the installed torch pinned, so pip can
# never replace it. Exit 0: every check passed; 1: one did not; 2: no GPU, or nothing to run it with.
# PYTHON picks the interpreter (default: python, else python3).
set -u
start=$SECONDS
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
py=${PYTHON:-$(command -v python || command -v python3)}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_acceptance: no NVIDIA GPU here (nvidia-smi is missing or lists none); the acceptance run needs one H100 or H200" >&2
    exit 2
fi
if [ -z "$py" ] || ! torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "gpu_acceptance: ${py:-python} cannot import torch; install a CUDA build of torch first (or set PYTHON)" >&2
    exit 2
fi
if ! PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$py" -c 'import scratchgpt.cli, safetensors, tiktoken, tqdm, matplotlib, pytest, hypothesis' 2>/dev/null; then
    echo "gpu_acceptance: installing this package, pytest and hypothesis (torch stays $torch_version)" >&2
    constraint=$(mktemp)
    echo "torch==$torch_version" >"$constraint"
    if ! "$py" -m pip install -q -c "$constraint" -e . "pytest>=8" "hypothesis>=6.100"; then
        rm -f "$constraint"
        echo "gpu_acceptance: pip could not install the package; run: $py -m pip install -e '.[dev]'" >&2
        exit 2
    fi
    rm -f "$constraint"
fi
# what pip took comes off the 470 s (under 8 minutes) that the checks share
exec "$py" benchmarks/gpu_acceptance.py --budget "$((470 - (SECONDS - start)))" "$@"

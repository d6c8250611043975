#!/usr/bin/env bash
# The ChatGPT stage on 2 CPU cores, no network: synthetic conversations about words from tiny Shakespeare
# (spell a word, reverse it, count its letters), a small pretrained character-level model (reused when
# runs/chat_demo_base exists), fine-tuned into runs/chat_demo; then both answer questions about words the
# fine-tuning never saw. Ends with the line `held-out accuracy: base X%, chat Y%`.
# Needs `scratchgpt` on PATH (pip install -e .); the corpus from $SCRATCHGPT_TINYSHAKESPEARE, else
# ../shared/data/tinyshakespeare/input.txt, else data/shakespeare_char/input.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
corpus=${SCRATCHGPT_TINYSHAKESPEARE:-}
for c in "$corpus" ../shared/data/tinyshakespeare/input.txt data/shakespeare_char/input.txt; do
    if [ -n "$c" ] && [ -f "$c" ]; then corpus=$c; break; fi
done
if [ -z "$corpus" ] || [ ! -f "$corpus" ]; then
    echo "error: tiny Shakespeare not found; set SCRATCHGPT_TINYSHAKESPEARE=PATH to its input.txt" >&2
    exit 2
fi
command -v scratchgpt >/dev/null || { echo "error: scratchgpt is not on PATH; pip install -e . (or activate .venv)" >&2; exit 2; }
python=$(dirname "$(command -v scratchgpt)")/python   # the interpreter scratchgpt is installed in
[ -x "$python" ] || python=$(command -v python3)
"$python" scripts/chat_demo.py data --corpus "$corpus" --out data/chat_demo_src
if [ ! -f runs/chat_demo_base/config.json ]; then
    scratchgpt prepare shakespeare_char --input "$corpus"
    scratchgpt train configs/chat/demo_base.toml --out runs/chat_demo_base --quiet
fi
scratchgpt prepare chat --input data/chat_demo_src/train.jsonl --run runs/chat_demo_base --out data/chat_demo
scratchgpt train configs/chat/demo_sft.toml --out runs/chat_demo --force --quiet
"$python" scripts/chat_demo.py score --base runs/chat_demo_base --chat runs/chat_demo \
    --questions data/chat_demo_src/heldout.jsonl
echo "chat demo: $(( $(date +%s) - start )) s from start" >&2

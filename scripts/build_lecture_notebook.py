"""Build docs/lecture/lecture.ipynb: the lecture's path, cell by cell, with this package; run it; keep the outputs.

Owns the notebook's cells (edit them here, not in the .ipynb, then rerun this script), running a notebook
top to bottom in a kernel of this very interpreter (`execute`, which tests/test_notebook.py also uses), and
writing it with its outputs so it reads on a web page. Does not own the package code the cells call, nor
the walkthrough prose (docs/lecture/README.md).

    python scripts/build_lecture_notebook.py            # build, run (about 2-3 minutes on 2 cores), write
    python scripts/build_lecture_notebook.py --no-run   # build and write without outputs

Needs nbformat, nbclient and ipykernel (the `dev` extra) and tiny Shakespeare (see the notebook's first cells).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "lecture" / "lecture.ipynb"
QUICK_ENV = "SCRATCHGPT_NOTEBOOK_QUICK"  # "1": every training loop runs a few steps only (the test suite's)

# (kind, tag or "", source). Tags name the cells whose outputs tests/test_notebook.py checks.
CELLS: list[tuple[str, str, str]] = [
    ("markdown", "", """\
# Let's build GPT, cell by cell, with scratchgpt

Andrej Karpathy's lecture "Let's build GPT: from scratch, in code, spelled out" builds a character-level GPT
in a notebook. This notebook walks the same path with this package: the same data, the same batches, the
same bigram baseline, the same trick behind self-attention and a small GPT trained for about a minute, each
cell naming the module that does the same thing at scale. The walkthrough with every step trained and
measured is [README.md](README.md) in this directory; `scratchgpt lecture` trains all seven steps.

It runs top to bottom on a 2-core CPU in a few minutes (the measured time is in [README.md](README.md)).
It needs the package (`pip install -e .` from the repository root) and tiny Shakespeare, found below.
This file is written by `scripts/build_lecture_notebook.py`, which also runs it and keeps its outputs: edit
the cells there and rerun it."""),
    ("code", "", """\
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

import scratchgpt
from scratchgpt.data import SHAKESPEARE_ENV, fetch_shakespeare, read_utf8
from scratchgpt.generate import generate
from scratchgpt.models import GPT, BigramLanguageModel, GPTConfig
from scratchgpt.models.gpt import CausalSelfAttention
from scratchgpt.tokenizers import CharTokenizer

# Models this small train faster on one core than split across two, and on a shared machine more predictably.
torch.set_num_threads(1)
# The test suite (tests/test_notebook.py) sets SCRATCHGPT_NOTEBOOK_QUICK=1 to run each training loop for a few
# steps only; unset, as here, every loop runs its full length.
QUICK = os.environ.get("SCRATCHGPT_NOTEBOOK_QUICK") == "1"
started = time.time()
print(f"scratchgpt {scratchgpt.__version__}, torch {torch.__version__}")"""),
    ("markdown", "", """\
## The data: tiny Shakespeare

From `$SCRATCHGPT_TINYSHAKESPEARE` if set, else the repository's shared copy, else an `input.txt` beside this
notebook, else downloaded to `input.txt`. Offline, the error says what to do: set the variable in a cell above
this one (`os.environ["SCRATCHGPT_TINYSHAKESPEARE"] = "/path/to/input.txt"`) or save `input.txt` beside the
notebook, then run the cell again. `scratchgpt prepare shakespeare_char` does the same for training runs
(`src/scratchgpt/data.py`)."""),
    ("code", "", """\
def find_tiny_shakespeare() -> Path:
    if os.environ.get(SHAKESPEARE_ENV):
        return Path(os.environ[SHAKESPEARE_ENV])
    for candidate in ("../../../shared/data/tinyshakespeare/input.txt", "../shared/data/tinyshakespeare/input.txt",
                      "input.txt"):
        if Path(candidate).is_file():
            return Path(candidate)
    return fetch_shakespeare(Path("input.txt"), instead=(  # offline: what a notebook reader can do about it
        f'set os.environ["{SHAKESPEARE_ENV}"] = "/path/to/input.txt" in a cell above this one and run this cell '
        "again, or save input.txt beside this notebook"))


text = read_utf8(find_tiny_shakespeare())
print(f"length of dataset in characters: {len(text):,}")
print(text[:500])"""),
    ("markdown", "", """\
## Characters in, integers out

The lecture's `chars = sorted(list(set(text)))`, `stoi`, `itos`, `encode` and `decode` are `CharTokenizer`
(`src/scratchgpt/tokenizers/char.py`): the vocabulary is the sorted set of characters."""),
    ("code", "vocab", """\
tok = CharTokenizer.from_text(text)
vocab_size = tok.vocab_size
print(repr("".join(tok.chars)))
print(vocab_size)"""),
    ("code", "encode", """\
print(tok.encode("hi there"))
print(tok.decode(tok.encode("hi there")))"""),
    ("code", "", """\
data = torch.tensor(tok.encode(text), dtype=torch.long)
print(data.shape, data.dtype)
print(data[:100])  # the first 100 characters, as the model sees them"""),
    ("markdown", "", """\
## Train and validation: the first 90%, the last 10%"""),
    ("code", "split", """\
n = int(0.9 * len(data))  # first 90% will be train, rest val
train_data, val_data = data[:n], data[n:]
print(f"train {len(train_data):,} tokens, val {len(val_data):,} tokens")"""),
    ("markdown", "", """\
## Chunks of `block_size`: one chunk, eight examples

A chunk of 9 characters holds 8 examples: each prefix of the first 8 predicts the character after it. That
is why a model trained this way can start from a single character and generate."""),
    ("code", "", """\
block_size = 8
x = train_data[:block_size]
y = train_data[1:block_size + 1]
for t in range(block_size):
    context = x[:t + 1]
    target = y[t]
    print(f"when input is {context} the target: {target}")"""),
    ("markdown", "", """\
Batches of random chunks, stacked; `y` is `x` shifted by one. These are the lecture's lines; the package's
`BatchLoader` (`src/scratchgpt/data.py`) does the same from memory-mapped token files, seeded."""),
    ("code", "batch", """\
torch.manual_seed(1337)
batch_size = 4  # how many independent sequences will we process in parallel?
block_size = 8  # what is the maximum context length for predictions?


def get_batch(split):
    # generate a small batch of data of inputs x and targets y
    data = train_data if split == "train" else val_data
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


xb, yb = get_batch("train")
print("inputs:", xb.shape)
print(xb)
print("targets:", yb.shape)
print(yb)
print("----")
for b in range(batch_size):  # batch dimension
    for t in range(block_size):  # time dimension
        context = xb[b, :t + 1]
        target = yb[b, t]
        print(f"when input is {context.tolist()} the target: {target}")"""),
    ("markdown", "", """\
## The bigram language model

`BigramLanguageModel` (`src/scratchgpt/models/bigram.py`) is a 65 x 65 table: row `i` holds the logits of the
character after `i`. Untrained, every next character should be about equally likely, so the loss should be
about -ln(1/65) = 4.17. The package starts the table near zero (N(0, 0.02)) and gets just that; the video
keeps `nn.Embedding`'s N(0, 1) and starts a little higher (it prints 4.87): the second line."""),
    ("code", "untrained", """\
torch.manual_seed(1337)
m = BigramLanguageModel(vocab_size)
logits, loss = m(xb, yb)
print(logits.shape)  # (B, T, vocab): the lecture flattens it to (B * T, vocab) for the loss
print(f"loss of the untrained bigram: {loss.item():.4f} (a uniform guess: ln(65) = {math.log(vocab_size):.4f})")
torch.manual_seed(1337)
video = BigramLanguageModel(vocab_size, init_scheme="torch")  # nn.Embedding's N(0, 1), as in the video
print(f"with the video's N(0, 1) table: {video(xb, yb)[1].item():.4f}")"""),
    ("markdown", "", """\
Sampling: start from a newline (id 0), take the softmax of the last position's logits, draw the next
character, append, repeat. `generate` (`src/scratchgpt/generate.py`) does that with a KV cache; untrained,
it is noise."""),
    ("code", "", """\
print(generate(m, tok, "", max_new_tokens=100, seed=1337))"""),
    ("markdown", "", """\
## Training the bigram

The lecture's `bigram.py`: batch 32, block 8, AdamW at lr 1e-2, 3000 steps, and `estimate_loss` averaging 200
batches per split every 300 steps. The package's training loop (`src/scratchgpt/train.py`) is the same five
lines at its core; `scratchgpt train lecture/1_bigram` runs this recipe with it."""),
    ("code", "bigram", """\
batch_size, block_size = 32, 8
max_iters = 30 if QUICK else 3000
eval_interval, eval_iters = 300, (10 if QUICK else 200)


@torch.no_grad()
def estimate_loss(model):
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            _, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def train(model, max_iters, learning_rate, eval_interval):
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    for step in range(max_iters):
        # every once in a while evaluate the loss on train and val sets
        if step % eval_interval == 0 or step == max_iters - 1:
            losses = estimate_loss(model)
            print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        xb, yb = get_batch("train")
        _, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return losses


torch.manual_seed(1337)
t0 = time.time()
bigram_losses = train(m, max_iters, 1e-2, eval_interval)
print(f"trained in {time.time() - t0:.0f} s")"""),
    ("code", "", """\
print(generate(m, tok, "", max_new_tokens=300, seed=1337))"""),
    ("markdown", "", """\
## The mathematical trick in self-attention: four ways to average the past

Each position should see the average of itself and everything before it, never what comes after. Four ways to
compute it, all equal: a loop; a matrix product with a lower-triangular matrix whose rows sum to one; a softmax
of zero affinities with `-inf` over the future; and a head of this package's self-attention
(`CausalSelfAttention` in `src/scratchgpt/models/gpt.py`) whose queries and keys are zero, so every affinity
is equal, and whose values are the input itself. Attention is version 3 with affinities that depend on the
data."""),
    ("code", "averages", """\
torch.manual_seed(1337)
B, T, C = 4, 8, 2  # batch, time, channels
x = torch.randn(B, T, C)

# version 1: a loop, xbow[b, t] = mean of x[b, :t + 1]
xbow = torch.zeros((B, T, C))
for b in range(B):
    for t in range(T):
        xprev = x[b, :t + 1]  # (t + 1, C)
        xbow[b, t] = torch.mean(xprev, 0)

# version 2: matrix multiply for a weighted aggregation
wei = torch.tril(torch.ones(T, T))
wei = wei / wei.sum(1, keepdim=True)
xbow2 = wei @ x  # (T, T) @ (B, T, C) ----> (B, T, C)

# version 3: use softmax
tril = torch.tril(torch.ones(T, T))
wei = torch.zeros((T, T))
wei = wei.masked_fill(tril == 0, float("-inf"))
wei = F.softmax(wei, dim=-1)
xbow3 = wei @ x

# version 4: a head of self-attention with zero queries and keys (equal affinities) and values = x
head = CausalSelfAttention(GPTConfig(n_layer=1, n_head=1, n_embd=C, block_size=T, attn_proj=False)).eval()
with torch.no_grad():
    head.c_attn.weight.zero_()  # its rows: queries (C), keys (C), values (C)
    head.c_attn.weight[2 * C:] = torch.eye(C)
    xbow4 = head(x)

# equal up to float rounding: the sums run in different orders (differences of about 3e-8 here)
print("loop == matmul: ", torch.allclose(xbow, xbow2, atol=1e-6))
print("loop == softmax:", torch.allclose(xbow, xbow3, atol=1e-6))
print("loop == a head: ", torch.allclose(xbow, xbow4, atol=1e-6))"""),
    ("markdown", "", """\
Self-attention makes the affinities data-dependent: every position emits a query ("what am I looking for")
and a key ("what do I contain"); their dot products, scaled by 1/sqrt(head size) so the softmax stays diffuse
at initialisation, become the weights. The lecture's version 4, one head of size 16 (the test
`tests/test_lecture_switches.py::test_single_head_equals_the_lectures_head` checks the package's attention
against exactly this):"""),
    ("code", "", """\
torch.manual_seed(1337)
B, T, C = 4, 8, 32  # batch, time, channels
x = torch.randn(B, T, C)

# let's see a single Head perform self-attention
head_size = 16
key = nn.Linear(C, head_size, bias=False)
query = nn.Linear(C, head_size, bias=False)
value = nn.Linear(C, head_size, bias=False)
with torch.no_grad():
    k = key(x)  # (B, T, 16)
    q = query(x)  # (B, T, 16)
    wei = q @ k.transpose(-2, -1) * head_size**-0.5  # (B, T, 16) @ (B, 16, T) ---> (B, T, T)
    wei = wei.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    out = wei @ value(x)  # (B, T, T) @ (B, T, 16) ---> (B, T, 16)
print(out.shape)
print(wei[0])"""),
    ("markdown", "", """\
## A GPT, trained for about a minute

`GPT` (`src/scratchgpt/models/gpt.py`) with the lecture's settings: ReLU feed-forward, an untied `lm_head`,
the lecture's biases (`bias="lecture"`: none on key, query and value, one everywhere else) and PyTorch's
default init. At the lecture's final size it counts what the lecture prints:"""),
    ("code", "full_size", """\
lecture = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=vocab_size, dropout=0.2,
                    mlp="relu", tie_weights=False, bias="lecture", init_scheme="torch")
with torch.device("meta"):  # shapes only: nothing is allocated or initialised
    print(sum(p.numel() for p in GPT(lecture).parameters()) / 1e6, "M parameters")"""),
    ("markdown", "", """\
That one needs a GPU (`scratchgpt lecture --budget gpu`; the lecture reached val 1.48 in about 15 minutes on
an A100). Here the same architecture, scaled down to fit a minute of one CPU core: 4 layers, 4 heads, 64 wide,
a context of 32 characters, batch 32, lr 1e-3, 1500 steps, no dropout (a minute is too short to overfit)."""),
    ("code", "gpt", """\
batch_size, block_size = 32, 32
max_iters = 20 if QUICK else 1500
eval_interval, eval_iters = 500, (5 if QUICK else 100)
torch.manual_seed(1337)
small = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=block_size, vocab_size=vocab_size, dropout=0.0,
                      mlp="relu", tie_weights=False, bias="lecture", init_scheme="torch"))
print(sum(p.numel() for p in small.parameters()) / 1e6, "M parameters")
t0 = time.time()
gpt_losses = train(small, max_iters, 1e-3, eval_interval)
print(f"trained in {time.time() - t0:.0f} s")"""),
    ("code", "", """\
print(generate(small, tok, "", max_new_tokens=500, seed=1337))"""),
    ("code", "", """\
print(f"bigram: val {bigram_losses['val']:.4f}; small GPT: val {gpt_losses['val']:.4f}")
print(f"the whole notebook ran in {time.time() - started:.0f} s")"""),
    ("markdown", "", """\
## Next

- `scratchgpt lecture` trains all seven of the lecture's steps, bigram to the final model, and writes
  [results.md](results.md) and a plot; [README.md](README.md) walks through each step and its code.
- `scratchgpt train lecture/7_scaled_up` trains the lecture's final model (on a GPU), and
  `scratchgpt sample runs/shakespeare_char_7_scaled_up --prompt "ROMEO:"` samples from it."""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, tag, source) in enumerate(CELLS):
        new = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        cell = new(source, id=f"cell-{i:02d}")
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, env: dict[str, str] | None = None,
            timeout: int = 900) -> nbformat.NotebookNode:
    """Run every cell in order in a kernel of this interpreter (so `import scratchgpt` is this install's),
    with the given environment variables added; return the notebook with its outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "python3"
        spec.mkdir(parents=True)
        # a kernelspec of our own, first on JUPYTER_PATH: a user's python3 kernel may be another interpreter
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python"}), encoding="utf-8")
        saved = dict(os.environ)
        os.environ.update({"JUPYTER_PATH": tmp, "IPYTHONDIR": str(Path(tmp) / "ipython"), **(env or {})})
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": str(cwd)}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


def outputs_text(cell: dict[str, Any]) -> str:
    """What a code cell printed (streams and plain-text results), as one string."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(str(out["data"]["text/plain"]))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-run", action="store_true", help="write the cells without running them")
    ap.add_argument("--out", type=Path, default=NOTEBOOK, help=f"where to write it (default {NOTEBOOK})")
    args = ap.parse_args(argv)
    nb = build()
    if not args.no_run:
        start = time.time()
        nb = execute(nb, cwd=NOTEBOOK.parent, env={QUICK_ENV: ""})
        print(f"ran the notebook in {time.time() - start:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    nbformat.write(nb, str(tmp))
    tmp.replace(args.out)  # atomic: a failed run leaves the previous notebook
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

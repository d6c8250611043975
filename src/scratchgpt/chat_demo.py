"""The chat demo, `scratchgpt demo chat`: the ChatGPT stage on 2 CPU cores with no network.

Synthetic conversations a small character-level model can learn, about words drawn from tiny Shakespeare:
spelling a word letter by letter ("spell crown" -> "c-r-o-w-n"), reversing it ("reverse crown" -> "nworc")
and counting its letters ("how many letters in crown?" -> "five"; tiny Shakespeare has one digit, so numbers
are words). The words are split in two: `train.jsonl` asks about one part, `heldout.jsonl` about the other,
so every held-out question is about a word the fine-tuning never saw. A quarter of the training conversations
ask a second question after the first answer (when both fit the base run's context): a model fine-tuned on
single exchanges only has never seen a reply follow another, and answers a second turn with nothing or
noise. Then:

    DATA/chat_demo_src/     train.jsonl, heldout.jsonl
    RUNS/chat_demo_base/    the base: recipe chat/demo_base on DATA/shakespeare_char (reused when it holds a run)
    DATA/chat_demo/         the conversations, prepared with the base's tokenizer and the chat template
    RUNS/chat_demo/         the fine-tuned run: recipe chat/demo_sft (replaced when it holds an earlier demo's)

and both models answer every held-out question greedily; the fine-tuned one also answers them as the second
turn of a conversation (a line of its own), and the last line is `held-out accuracy: base X%, chat Y%` (an
answer counts when it is exactly the expected text; the base is asked as fine-tuning starts from it, the
template's new tokens added).

Owns the questions, the order of the steps and the scoring. Does not own training (`train/`), the chat
template (`chat.py`), preparing data (`data.py`, `chat_data.py`) or generation (`generate.py`).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import chat
from .api import load
from .chat_data import prepare_chat
from .checkpoint import init_from_run, is_run_dir, read_config, read_tokenizer
from .config import Config, DataConfig, load_recipe
from .console import echo
from .data import prepare_shakespeare_char, shakespeare_source
from .errors import DataError
from .fileio import read_utf8
from .generate import Engine
from .models import build_model
from .outputs import Kind, claim
from .sampling import SamplingSettings
from .train import train

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
SEED = 1337
BASE, SFT = "chat/demo_base", "chat/demo_sft"
_TINY_TRAIN = ["--train.max_iters=2", "--train.eval_interval=2", "--train.eval_iters=1", "--train.batch_size=4",
               "--train.warmup_iters=1", "--train.log_interval=1", "--train.threads=1"]
# budget -> (training conversations, held-out words, overrides of both recipes); tiny is for tests
BUDGETS: dict[str, tuple[int, int, list[str]]] = {"full": (20000, 100, []), "tiny": (60, 2, _TINY_TRAIN)}


def questions(word: str) -> list[tuple[str, str]]:
    return [(f"spell {word}", "-".join(word)), (f"reverse {word}", word[::-1]),
            (f"how many letters in {word}?", NUMBERS[len(word)])]


def turn(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def fits(messages: list[dict], context: int) -> bool:
    """Whether a conversation fits a context of `context` tokens: one per character, two per message's marks."""
    return sum(len(m["content"]) + 2 for m in messages) <= context


def _conversation(messages: list[dict]) -> str:
    return json.dumps({"messages": messages})


# what the data step writes: a new or empty directory, or one holding these two files (replaced whole, other
# files kept), never anything else (scratchgpt.outputs' rule)
DEMO_FILES = ("train.jsonl", "heldout.jsonl")
CONVERSATIONS = Kind("the chat demo's conversations", lambda d: all((d / f).is_file() for f in DEMO_FILES),
                     lambda name: name in DEMO_FILES)


def make_data(corpus: Path, out: Path, train_size: int, heldout_words: int, seed: int = SEED) -> None:
    """train.jsonl (train_size conversations) and heldout.jsonl (3 questions about each of heldout_words words
    that train.jsonl never mentions), swapped into `out` whole."""
    target = claim(out, CONVERSATIONS, "demo chat", inputs=[corpus])
    text = read_utf8(corpus)  # missing, empty, a directory or not UTF-8: one sentence
    words = sorted({w for w in re.findall(r"[a-z]+", text) if 3 <= len(w) <= 8})
    if len(words) <= heldout_words:
        raise DataError(f"'{corpus}' has {len(words)} distinct lower-case words of 3 to 8 letters; the demo needs more "
                        f"than {heldout_words} ({heldout_words} held out, the rest to fine-tune on): pass a larger text "
                        "with --corpus")
    context = load_recipe(BASE).model.block_size  # the base run's context: a training conversation must fit it
    rng = random.Random(seed)
    rng.shuffle(words)
    held, train_words = words[:heldout_words], words[heldout_words:]
    rows = []
    for i in range(train_size):
        messages = turn(*rng.choice(questions(rng.choice(train_words))))
        if i % 4 == 0:  # a second question after the first answer, when both fit the context
            second = messages + turn(*rng.choice(questions(rng.choice(train_words))))
            messages = second if fits(second, context) else messages
        rows.append(_conversation(messages))
    with target.stage() as stage:
        (stage / "train.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        (stage / "heldout.jsonl").write_text("".join(_conversation(turn(q, a)) + "\n" for w in held
                                                     for q, a in questions(w)),
                                             encoding="utf-8")
    echo(f"wrote {out}: {train_size} training conversations about {len(train_words)} words, "
         f"{3 * len(held)} held-out questions about {len(held)} other words")


def base_at_step_zero(base: Path) -> Engine:
    """The base run as fine-tuning starts from it: the chat template's tokens added, their rows the mean."""
    tok = chat.chat_tokenizer(read_tokenizer(base))
    cfg = Config(name="base", data=DataConfig(dir=""), model=replace(read_config(base).model, init_from=str(base)))
    cfg, state = init_from_run(cfg, tok)
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return Engine(model.eval(), tok)


def _settings(answer: str) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=len(answer) + 8, temperature=0)


def accuracy(engine: Engine, items: list[tuple[list[dict], str]]) -> float:
    """The share of conversations whose greedy reply is exactly the expected answer."""
    right = 0
    with torch.no_grad():
        for messages, a in items:
            right += engine.chat(messages, _settings(a)) == a
    return right / max(len(items), 1)


def score(base: Path, run: Path, questions_file: Path) -> str:
    """Both models asked every question in questions_file: the demo's last line."""
    items = []
    for line in questions_file.read_text(encoding="utf-8").splitlines():
        m = json.loads(line)["messages"]
        items.append((m[0]["content"], m[1]["content"]))
    single = [([{"role": "user", "content": q}], a) for q, a in items]
    engine = load(run, device="cpu", dtype="float32").engine
    chat_acc = accuracy(engine, single)
    base_acc = accuracy(base_at_step_zero(base), single)
    # the same questions as a second turn, after the previous question and its answer (only where the model
    # sees both: the conversation fits the context with room for the reply, so no turn is left out)
    asked = [(turn(*items[i - 1]) + [{"role": "user", "content": q}], a) for i, (q, a) in enumerate(items) if i]
    second = [(m, a) for m, a in asked if not engine.fit_chat(m, _settings(a)).dropped]
    echo(f"held-out accuracy as a second turn: chat {100 * accuracy(engine, second):.0f}% ({len(second)} questions)")
    return f"held-out accuracy: base {100 * base_acc:.0f}%, chat {100 * chat_acc:.0f}%"


def run_chat_demo(corpus: str | Path | None = None, data_dir: str | Path = "data", runs_dir: str | Path = "runs",
                  budget: str = "full", progress: bool = True) -> str:
    """Every step of the demo (module docstring); returns its last line, `held-out accuracy: ...`."""
    start = time.time()
    train_size, heldout_words, overrides = BUDGETS[budget]
    data, runs = Path(data_dir), Path(runs_dir)
    text = shakespeare_source(corpus, data / "shakespeare_char")  # --corpus, $SCRATCHGPT_TINYSHAKESPEARE, download
    make_data(text, data / "chat_demo_src", train_size, heldout_words)
    base, sft = runs / "chat_demo_base", runs / "chat_demo"
    if is_run_dir(base):
        echo(f"reusing the base run {base}")
    else:
        prepare_shakespeare_char(text, data / "shakespeare_char")
        train(load_recipe(BASE, [*overrides, f"--data.dir={data / 'shakespeare_char'}"]), out_dir=base,
              progress=progress)
    prepare_chat([data / "chat_demo_src" / "train.jsonl"], data / "chat_demo", read_tokenizer(base),
                 read_config(base).model.block_size, source=str(base.resolve()))
    cfg = load_recipe(SFT, [*overrides, f"--data.dir={data / 'chat_demo'}", f"--model.init_from={base}"])
    again = is_run_dir(sft) and read_config(sft).name == cfg.name  # an earlier demo's fine-tuning: replaced
    train(cfg, out_dir=sft, progress=progress, force=again)
    line = score(base, sft, data / "chat_demo_src" / "heldout.jsonl")
    echo(f"chat demo: {time.time() - start:.0f} s from start")
    return line

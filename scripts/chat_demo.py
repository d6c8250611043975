"""The chat demo's two Python steps (scripts/chat_demo.sh runs the rest with the `scratchgpt` command).

    python scripts/chat_demo.py data --corpus input.txt --out data/chat_demo_src
    python scripts/chat_demo.py score --base runs/chat_demo_base --chat runs/chat_demo --questions heldout.jsonl

`data` writes synthetic conversations a small character-level model can learn, about words drawn from the
corpus: spelling a word letter by letter ("spell crown" -> "c-r-o-w-n"), reversing it ("reverse crown" ->
"nworc") and counting its letters ("how many letters in crown?" -> "five"; tiny Shakespeare has one digit,
so numbers are words). The words are split in two: `train.jsonl` asks about one part, `heldout.jsonl` about
the other, so every held-out question is about a word the fine-tuning never saw. A quarter of the training
conversations ask a second question after the first answer (when both fit the base run's context): a model
fine-tuned on single exchanges only has never seen a reply follow another, and answers a second turn with
nothing or noise (the "second turn comes back empty" of issue 19).

`score` asks each held-out question of the fine-tuned run and of the base run it started from (the base
with the chat template's new tokens added the way fine-tuning adds them, as it is at step 0), greedily, and
prints `held-out accuracy: base X%, chat Y%` (an answer counts when it is exactly the expected text), then
the chat run's accuracy on held-out questions asked as the second turn of a conversation.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import torch

import scratchgpt
from scratchgpt import chat
from scratchgpt.checkpoint import init_from_run, read_config, read_tokenizer
from scratchgpt.config import Config, DataConfig
from scratchgpt.generate import Engine
from scratchgpt.models import build_model
from scratchgpt.sampling import SamplingSettings

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
CONTEXT = 64  # configs/chat/demo_base.toml's block_size: a training conversation must fit it


def questions(word: str) -> list[tuple[str, str]]:
    return [(f"spell {word}", "-".join(word)), (f"reverse {word}", word[::-1]),
            (f"how many letters in {word}?", NUMBERS[len(word)])]


def turn(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def fits(messages: list[dict]) -> bool:
    """Whether a conversation fits the demo's context: one token per character, two per message's marks."""
    return sum(len(m["content"]) + 2 for m in messages) <= CONTEXT


def make_data(corpus: Path, out: Path, seed: int, train_size: int, heldout_words: int) -> None:
    text = corpus.read_text(encoding="utf-8")
    words = sorted({w for w in re.findall(r"[a-z]+", text) if 3 <= len(w) <= 8})
    rng = random.Random(seed)
    rng.shuffle(words)
    held, train = words[:heldout_words], words[heldout_words:]
    out.mkdir(parents=True, exist_ok=True)

    def conversation(q: str, a: str) -> str:
        return json.dumps({"messages": turn(q, a)})

    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(train_size):
            messages = turn(*rng.choice(questions(rng.choice(train))))
            if i % 4 == 0:  # a second question after the first answer, when both fit the context
                second = messages + turn(*rng.choice(questions(rng.choice(train))))
                messages = second if fits(second) else messages
            f.write(json.dumps({"messages": messages}) + "\n")
    with open(out / "heldout.jsonl", "w", encoding="utf-8") as f:
        for w in held:
            for q, a in questions(w):
                f.write(conversation(q, a) + "\n")
    print(f"wrote {out}: {train_size} training conversations about {len(train)} words, "
          f"{3 * len(held)} held-out questions about {len(held)} other words")


def base_at_step_zero(base: Path) -> Engine:
    """The base run as fine-tuning starts from it: the chat template's tokens added, their rows the mean."""
    tok = chat.chat_tokenizer(read_tokenizer(base))
    cfg = Config(name="base", data=DataConfig(dir=""), model=replace(read_config(base).model, init_from=str(base)))
    cfg, state = init_from_run(cfg, tok)
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return Engine(model.eval(), tok)


def engine_settings(answer: str) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=len(answer) + 8, temperature=0)


def accuracy(engine: Engine, items: list[tuple[str, str]]) -> float:
    right = 0
    with torch.no_grad():
        for q, a in items:
            right += engine.chat([{"role": "user", "content": q}], engine_settings(a)) == a
    return right / len(items)


def score(base: Path, run: Path, questions_file: Path) -> None:
    items = []
    for line in questions_file.read_text(encoding="utf-8").splitlines():
        m = json.loads(line)["messages"]
        items.append((m[0]["content"], m[1]["content"]))
    engine = scratchgpt.load(run, device="cpu", dtype="float32").engine
    chat_acc = accuracy(engine, items)
    base_acc = accuracy(base_at_step_zero(base), items)
    print(f"held-out accuracy: base {100 * base_acc:.0f}%, chat {100 * chat_acc:.0f}%")
    # the same questions as a second turn, after the previous question and its answer (where the model sees
    # both: the conversation fits the context with room for the reply, so no turn is left out)
    asked = [(turn(*items[i - 1]) + [{"role": "user", "content": q}], a) for i, (q, a) in enumerate(items) if i]
    pairs = [(m, a) for m, a in asked if not engine.fit_chat(m, engine_settings(a)).dropped]
    right = 0
    with torch.no_grad():
        for messages, a in pairs:
            right += engine.chat(messages, engine_settings(a)) == a
    print(f"held-out accuracy as a second turn: chat {100 * right / max(len(pairs), 1):.0f}% ({len(pairs)} questions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--corpus", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, default=1337)
    d.add_argument("--train-size", type=int, default=20000)
    d.add_argument("--heldout-words", type=int, default=100)
    s = sub.add_parser("score")
    s.add_argument("--base", type=Path, required=True)
    s.add_argument("--chat", type=Path, required=True)
    s.add_argument("--questions", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "data":
        make_data(args.corpus, args.out, args.seed, args.train_size, args.heldout_words)
    else:
        score(args.base, args.chat, args.questions)


if __name__ == "__main__":
    main()

"""Scoring text with a trained model: `scratchgpt eval` and `LoadedModel.score`.

Owns the sliding-window scorer (`windows`, `score_tokens`), a text's figures (`score_text` -> `TextScore`:
mean loss, perplexity, bits per byte), multiple-choice accuracy (`read_choices`, `score_choices`) and
`evaluate_run`, the command's work, with its table. Does not own the trainer's val loss (`train/evaluate.py`:
random or sequential batches of prepared token files, during training), loading a run (`checkpoint.py`) or
devices (`runtime.py`). Imports nothing from `train/`.

What is scored. A text of N tokens t_0 .. t_{N-1} has N - 1 predictions: t_i (i >= 1) from the tokens before
it; t_0 has none, so it is context only. The model sees at most B = block_size tokens, so the text is read in
windows: window k feeds t_{kS} .. t_{kS+B-1} (fewer at the end) and predicts the token after each of them.
The first window's B predictions are all scored; each later window scores only the predictions past the
previous window's end (the last S of them, fewer at the end); the rest of it is context. So t_i is predicted
from t_{kS} .. t_{i-1}, k the first window that reaches it. S = B (the default) gives non-overlapping windows
in which each position predicts from its in-window prefix: exactly the windows of `BatchLoader.sequential`,
the training run's full-split val loss, except that the trainer drops the text's last partial window and this
scores it. A smaller S gives every scored token at least B - S tokens of context (as in Hugging Face's
perplexity guide), at B / S times the compute. A window shorter than B also feeds the token after its last
prediction (nobody scores what it predicts): a text that fits the context is then one forward of the whole
text, the shape the server's prefill gives it, so the server's echo log-probabilities, `score` and `eval` are
the same numbers in bf16 too (bf16 attention rounds differently at different lengths).

Figures: loss = mean -ln p over the scored tokens (nats), perplexity = exp(loss), bits per byte = total
-ln p / ln 2 / the UTF-8 bytes those tokens cover, which are the text's bytes less the first token's. Bytes,
unlike tokens, are the same whatever the tokenizer, so char, BPE and GPT-2 models are compared on it.

Multiple choice: a JSONL line `{"context": str, "choices": [str, ...], "label": int}` (at most
`limits.MAX_CHOICES` choices, a line at most `limits.MAX_LINE_BYTES`: both refused as the file is read). Each choice is scored
as a continuation of the context: the sum of its tokens' log-probabilities given the context (trailing
whitespace of the context moves to the choice, and the choice's tokens are those of context + choice after
the context's, as lm-evaluation-harness does). accuracy: the best sum is the label; length-normalised
accuracy: the best sum divided by the choice's length in characters (lm-evaluation-harness's acc_norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .console import ProgressBar, progress_bar
from .errors import DataError, UserError
from .fileio import read_utf8
from .limits import MAX_CHOICES
from .runtime import Runtime
from .schema import ListOf, Str, read_jsonl
from .tokenizers import Tokenizer

LN2 = math.log(2.0)
SOFTMAX_ROWS = 2048  # positions per float32 log-softmax: 2048 x GPT-2's 50,257 logits is 400 MB


# ---- the sliding window ------------------------------------------------------------------------------

def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, scored) of each window over n_tokens tokens: it feeds tokens [start, start + length),
    predicts tokens [start + 1, start + length + 1), and scores the last `scored` of those predictions."""
    if not 1 <= stride <= block_size:
        raise UserError(f"the stride must be between 1 and the block size {block_size}, got {stride}")
    out, covered, start = [], 0, 0  # covered: predictions t_1 .. t_covered are scored
    while covered < n_tokens - 1:
        end = min(start + block_size, n_tokens - 1)  # the window predicts t_{start+1} .. t_end
        out.append((start, end - start, end - covered))
        covered, start = end, start + stride
    return out


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf  # exp(710) overflows a float


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """ln p(y[r, t] | x[r, :t + 1]) at each masked (r, t), in row-major order, float32 on the CPU. x may be
    longer than y (fed tokens whose predictions nobody scores)."""
    with rt.autocast():
        logits, _ = model(x)  # (b, T', V), T' >= T
    logits = logits[:, :y.size(1)]  # (b, T, V)
    rows, cols = mask.nonzero(as_tuple=True)  # (M,) each: only the scored positions go through the softmax
    out = []
    for r, c in zip(rows.split(SOFTMAX_ROWS), cols.split(SOFTMAX_ROWS), strict=True):  # bounded float32 copies
        lp = logits[r, c].float().log_softmax(-1)  # (m, V)
        out.append(lp.gather(-1, y[r, c].unsqueeze(-1)).squeeze(-1))  # (m,)
    return torch.cat(out).cpu() if out else torch.empty(0)


def score_tokens(model: nn.Module, ids: Sequence[int] | np.ndarray, block_size: int, stride: int | None = None,
                 batch_size: int = 8, rt: Runtime | None = None, bar: ProgressBar | None = None) -> np.ndarray:
    """ln p of every token after the first, float32, shape (len(ids) - 1,): the windows of `windows` (stride
    None: block_size), `batch_size` of them per forward pass. `rt` gives autocast (None: the model as it is)."""
    ids = np.asarray(ids, dtype=np.int64)
    if batch_size < 1:
        raise UserError(f"the batch size must be positive, got {batch_size}")
    device = _device_of(model)
    rt = rt if rt is not None else Runtime(device)
    wins = windows(len(ids), block_size, stride or block_size)
    parts, i = [], 0
    while i < len(wins):  # a batch: consecutive windows of one length (all but the last window are full)
        j = i + 1
        while j < len(wins) and j - i < batch_size and wins[j][1] == wins[i][1]:
            j += 1
        group, length = wins[i:j], wins[i][1]
        starts = np.array([s for s, _, _ in group])
        xy = torch.from_numpy(ids[starts[:, None] + np.arange(length + 1)]).to(device)  # (b, T + 1)
        scored = torch.tensor([n for _, _, n in group], device=device)  # (b,)
        mask = torch.arange(length, device=device) >= (length - scored)[:, None]  # (b, T): the last n of each row
        # a window shorter than the block also feeds its last token (its prediction is not scored): the very
        # shape the server's prefill of that text has, so in bf16 both compute the same numbers
        x = xy if length < block_size else xy[:, :-1]
        parts.append(_logprobs(model, x, xy[:, 1:], mask, rt))
        if bar is not None:
            bar.update(int(scored.sum()))
        i = j
    return torch.cat(parts).numpy() if parts else np.empty(0, dtype=np.float32)


# ---- a text's figures --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextScore:
    """A scored text: its token ids, ln p of each token after the first (`token_logprobs[i]` is that of
    `tokens[i + 1]`), and the UTF-8 bytes those scored tokens cover."""

    tokens: list[int]
    token_logprobs: np.ndarray = field(repr=False)
    scored_bytes: int

    @property
    def scored_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def nats(self) -> float:
        """-sum ln p over the scored tokens (summed in float64)."""
        return -float(self.token_logprobs.astype(np.float64).sum())

    @property
    def loss(self) -> float:
        """Mean nats per scored token (the training loss's unit)."""
        return self.nats / self.scored_tokens

    @property
    def perplexity(self) -> float:
        return _exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / LN2 / self.scored_bytes


def first_token_bytes(tokenizer: Tokenizer, ids: np.ndarray, text: str) -> int:
    """UTF-8 bytes of the text's first token, which no window predicts.

    The token's bytes when the text starts with them (every byte-level token; char, a known word, a
    SentencePiece piece); else (a word's `<unk>`) the longest prefix of the text that encodes to that one token;
    else (a SentencePiece byte piece of a character) one byte."""
    first = [int(ids[0])]
    raw = tokenizer.decode_bytes(first)
    if raw and text.encode("utf-8", errors="surrogatepass").startswith(raw):
        return len(raw)
    longest = 0
    for k in range(1, len(text) + 1):
        got = list(tokenizer.encode_array(text[:k]))
        if len(got) > 1:
            break
        if got == first:
            longest = k
    return len(text[:longest].encode("utf-8")) if longest else 1


def _encode_text(tokenizer: Tokenizer, text: str, name: str) -> np.ndarray:
    try:
        ids = tokenizer.encode_array(text)
    except UserError as e:
        raise DataError(f"{name} cannot be encoded: {e}") from None
    if len(ids) < 2:
        raise DataError(f"{name} holds {len(ids)} token{'' if len(ids) == 1 else 's'}; scoring needs at least two "
                        "(the first is never predicted)")
    return ids


def _score_ids(model: nn.Module, tokenizer: Tokenizer, ids: np.ndarray, text: str, block_size: int, stride: int | None,
               batch_size: int, rt: Runtime | None, bar: ProgressBar | None) -> TextScore:
    logprobs = score_tokens(model, ids, block_size, stride, batch_size, rt, bar)
    scored_bytes = len(text.encode("utf-8", errors="surrogatepass")) - first_token_bytes(tokenizer, ids, text)
    return TextScore(ids.tolist(), logprobs, max(scored_bytes, 1))


def score_text(model: nn.Module, tokenizer: Tokenizer, text: str, block_size: int, stride: int | None = None,
               batch_size: int = 8, rt: Runtime | None = None, bar: ProgressBar | None = None,
               name: str = "the text") -> TextScore:
    """Tokenize text and score every token after the first (see the module docstring)."""
    ids = _encode_text(tokenizer, text, name)
    return _score_ids(model, tokenizer, ids, text, block_size, stride, batch_size, rt, bar)


# ---- multiple choice ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]
    label: int
    line: int  # 1-based line of the JSONL file


def _bad_line(path: str | Path, line: int, why: str) -> DataError:
    return DataError(f"choices file '{path}' line {line}: {why}")


# a line of the choices file (schema.py); the label is then checked against the number of choices
QUESTION = {"context": Str(empty=True), "choices": ListOf(Str(), least=1, most=MAX_CHOICES), "label": int}


def read_choices(path: str | Path) -> list[Question]:
    """The questions of a JSONL file (blank lines skipped); a bad line is a DataError naming it. A line longer
    than `limits.MAX_LINE_BYTES` or a question of more than `limits.MAX_CHOICES` choices is refused as it is read."""
    questions = []
    for n, obj in read_jsonl(path, QUESTION, "choices file"):
        if not 0 <= obj["label"] < len(obj["choices"]):
            raise _bad_line(path, n, f"'label' {obj['label']} is not the index of one of its {len(obj['choices'])} choices")
        questions.append(Question(obj["context"], tuple(obj["choices"]), obj["label"], n))
    if not questions:
        raise DataError(f"choices file '{path}' holds no questions (only blank lines)")
    return questions


def _choice_rows(tokenizer: Tokenizer, q: Question, block_size: int, path: str | Path) -> list[tuple[list[int], int]]:
    """(token ids of context + choice, cut to block_size + 1 from the left; the choice's token count) per choice."""
    def enc(text: str) -> list[int]:
        try:
            return tokenizer.encode_array(text).tolist()
        except UserError as e:  # a character the tokenizer lacks
            raise _bad_line(path, q.line, str(e)) from None

    spaces = len(q.context) - len(q.context.rstrip())
    context, moved = (q.context[:-spaces], q.context[-spaces:]) if spaces else (q.context, "")
    ctx = enc(context)
    if not ctx:
        raise _bad_line(path, q.line, "the context has no tokens to predict the choices from")
    rows = []
    for k, choice in enumerate(q.choices):
        whole = enc(context + moved + choice)
        if whole[:len(ctx)] != ctx or len(whole) == len(ctx):  # a token spans the seam: encode apart
            whole = ctx + enc(moved + choice)
        n = len(whole) - len(ctx)
        if n > block_size:
            raise _bad_line(path, q.line, f"choice {k} is {n} tokens, more than the model's block of {block_size}")
        rows.append((whole[-(block_size + 1):], n))
    return rows


@dataclass(frozen=True)
class ChoiceScore:
    questions: int
    accuracy: float
    acc_norm: float
    logprobs: list[list[float]] = field(repr=False)  # per question, per choice: the sum of ln p of its tokens


def score_choices(model: nn.Module, tokenizer: Tokenizer, questions: list[Question], block_size: int,
                  batch_size: int = 8, rt: Runtime | None = None, bar: ProgressBar | None = None,
                  path: str | Path = "choices") -> ChoiceScore:
    """Accuracy and length-normalised accuracy; choices of similar length share a forward pass (right-padded:
    a causal model's real positions never see the padding)."""
    device = _device_of(model)
    rt = rt if rt is not None else Runtime(device)
    rows = [(qi, k, seq, n) for qi, q in enumerate(questions)
            for k, (seq, n) in enumerate(_choice_rows(tokenizer, q, block_size, path))]
    sums = [[0.0] * len(q.choices) for q in questions]
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
    for b in range(0, len(order), batch_size):
        batch = [rows[r] for r in order[b:b + batch_size]]
        width = max(len(seq) for _, _, seq, _ in batch) - 1
        xy = torch.zeros(len(batch), width + 1, dtype=torch.long)  # (b, T + 1), padded with id 0
        mask = torch.zeros(len(batch), width, dtype=torch.bool)  # (b, T): the choice's predictions
        for r, (_, _, seq, n) in enumerate(batch):
            xy[r, :len(seq)] = torch.tensor(seq)
            mask[r, len(seq) - 1 - n:len(seq) - 1] = True
        xy, mask = xy.to(device), mask.to(device)
        lp = _logprobs(model, xy[:, :-1], xy[:, 1:], mask, rt).double()
        for (qi, k, _, _), part in zip(batch, lp.split([n for _, _, _, n in batch]), strict=True):
            sums[qi][k] = float(part.sum())
        if bar is not None:
            bar.update(len(batch))
    hits = norm_hits = 0
    for q, s in zip(questions, sums, strict=True):
        hits += int(np.argmax(s)) == q.label
        norm_hits += int(np.argmax([v / len(c) for v, c in zip(s, q.choices, strict=True)])) == q.label
    return ChoiceScore(len(questions), hits / len(questions), norm_hits / len(questions), sums)


# ---- the command -------------------------------------------------------------------------------------

def _text_row(name: str, s: TextScore) -> dict[str, Any]:
    return {"file": name, "tokens": len(s.tokens), "scored_tokens": s.scored_tokens, "scored_bytes": s.scored_bytes,
            "loss": s.loss, "perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte}


def _total_row(scores: list[TextScore]) -> dict[str, Any]:
    nats = sum(s.nats for s in scores)
    scored = sum(s.scored_tokens for s in scores)
    n_bytes = sum(s.scored_bytes for s in scores)
    return {"file": "total", "tokens": sum(len(s.tokens) for s in scores), "scored_tokens": scored,
            "scored_bytes": n_bytes, "loss": nats / scored, "perplexity": _exp(nats / scored),
            "bits_per_byte": nats / LN2 / n_bytes}


def evaluate_run(run_dir: str | Path, texts: Sequence[str | Path] = (), choices: str | Path | None = None, *,
                 which: str = "best", device: str = "auto", dtype: str = "auto", threads: int = 0,
                 batch_size: int = 8, stride: int | None = None, progress: bool = True,
                 quantize: str = "none") -> dict[str, Any]:
    """Score text files and / or a multiple-choice file with a run's model; a JSON-ready report.

    Every file is read (and the choices file checked) before the model loads, and every file is encoded before
    any is scored, so a bad file costs no time."""
    from . import runtime
    from .checkpoint import load_model, weights_path

    if not texts and choices is None:
        raise UserError("`eval` needs --text FILE [FILE ...] or --choices FILE.jsonl")
    read = [(str(p), read_utf8(p)) for p in texts]
    questions = read_choices(choices) if choices is not None else None
    rt = runtime.setup(device, dtype, threads=threads, use="infer", quantize=quantize)  # the numbers load() gives
    model, tokenizer, cfg = load_model(run_dir, which=which, device=rt.device)
    model = rt.prepare(model)
    block = cfg.model.block_size
    stride = stride or block
    if stride > block:
        raise UserError(f"--stride {stride} is more than the model's block size {block}; tokens would be skipped")
    report: dict[str, Any] = {"run": str(run_dir), "weights": weights_path(run_dir, which).name,
                              "tokenizer": tokenizer.kind, "block_size": block, "stride": stride}
    if read:
        ids = {name: _encode_text(tokenizer, text, f"text file '{name}'") for name, text in read}  # fail early
        bar = progress_bar(sum(len(v) - 1 for v in ids.values()), desc="scoring", unit="tok", unit_scale=True,
                           enabled=progress)
        scores = [_score_ids(model, tokenizer, ids[name], text, block, stride, batch_size, rt, bar)
                  for name, text in read]
        bar.close()
        report["texts"] = [_text_row(name, s) for (name, _), s in zip(read, scores, strict=True)]
        report["total"] = _total_row(scores)
    if questions is not None:
        n_rows = sum(len(q.choices) for q in questions)
        bar = progress_bar(n_rows, desc="choices", unit="choice", enabled=progress)
        cs = score_choices(model, tokenizer, questions, block, batch_size, rt, bar, choices)
        bar.close()
        report["choices"] = {"file": str(choices), "questions": cs.questions, "accuracy": cs.accuracy,
                             "acc_norm": cs.acc_norm}
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [f"{report['run']} ({report['weights']}, {report['tokenizer']} tokenizer, block {report['block_size']}, "
             f"stride {report['stride']})"]
    if "texts" in report:
        rows = report["texts"] + ([report["total"]] if len(report["texts"]) > 1 else [])
        width = max(len("text"), *(len(r["file"]) for r in rows))
        lines.append(f"{'text':<{width}}  {'tokens':>11}  {'scored':>11}  {'bytes':>12}  {'loss':>7}  "
                     f"{'perplexity':>10}  {'bits/byte':>9}")
        for r in rows:
            lines.append(f"{r['file']:<{width}}  {r['tokens']:>11,}  {r['scored_tokens']:>11,}  {r['scored_bytes']:>12,}  "
                         f"{r['loss']:>7.4f}  {r['perplexity']:>10.3f}  {r['bits_per_byte']:>9.4f}")
    if "choices" in report:
        c = report["choices"]
        lines.append(f"choices {c['file']}: {c['questions']:,} questions, accuracy {c['accuracy']:.4f}, "
                     f"length-normalised accuracy {c['acc_norm']:.4f}")
    return "\n".join(lines)


__all__ = ["ChoiceScore", "Question", "TextScore", "evaluate_run", "first_token_bytes", "format_report",
           "read_choices", "score_choices", "score_text", "score_tokens", "windows"]

"""lm-evaluation-harness with its defaults against `scratchgpt serve` (issue 19): its `local-completions`
model with `tokenizer_backend=remote` reads /tokenizer_info, /tokenize and /detokenize, so a char run is
scored with no export. Offline, on two tasks built from local JSONL files (multiple choice: loglikelihood;
generate_until), and checked against our own numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lm_eval")

import scratchgpt  # noqa: E402
from scratchgpt.serve import create_app  # noqa: E402
from serve_util import make_run, running_server  # noqa: E402

QUESTIONS = [  # context + " " + choice stays within the tiny run's context of 16 characters
    {"context": "the lazy", "choices": ["dog", "fox", "hen"], "label": 0},
    {"context": "a quick", "choices": ["brown", "lazy", "dog"], "label": 0},
    {"context": "jumps", "choices": ["over", "the", "dog"], "label": 0},
    {"context": "line 1:", "choices": ["the", "dog", "fox"], "label": 1},
]
PROMPTS = [{"context": "line 3", "answer": ": the"}, {"context": "the quick", "answer": " brown"}]

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


def _lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()),
                  key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def run_dir(small_text_dir, tmp_path_factory):
    return make_run(small_text_dir, tmp_path_factory.mktemp("lm_eval") / "tiny")


def test_tokenizer_endpoints_in_vllms_shapes(run_dir):
    with running_server(create_app(run_dir)) as base:
        info = httpx.get(f"{base}/tokenizer_info").json()
        assert info["eos_token"] is None and info["tokenizer_class"] == "char" and info["model_max_length"] == 16
        ids = httpx.post(f"{base}/tokenize", json={"prompt": "the fox", "add_special_tokens": False}).json()
        assert httpx.post(f"{base}/detokenize", json={"tokens": ids["tokens"]}).json() == {"prompt": "the fox"}
        assert httpx.post(f"{base}/tokenize", json={"prompt": ""}).json()["tokens"] == []  # nothing added


def test_lm_eval_local_completions_scores_a_char_run_through_the_server(run_dir, tmp_path):
    exe = shutil.which("lm_eval") or shutil.which("lm-eval")
    if exe is None:
        pytest.skip("the lm_eval command is not installed")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(MC_TASK.format(data=_lines(tmp_path / "mc.jsonl", QUESTIONS)))
    (tasks / "tiny_gen.yaml").write_text(GEN_TASK.format(data=_lines(tmp_path / "gen.jsonl", PROMPTS)))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    app = create_app(run_dir)
    with running_server(app) as base:
        cmd = [exe, "--model", "local-completions", "--model_args",
               f"base_url={base}/v1/completions,model={run_dir},tokenizer_backend=remote",
               "--tasks", "tiny_mc,tiny_gen", "--include_path", str(tasks), "--output_path", str(tmp_path / "out"),
               "--log_samples"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lm = scratchgpt.load(run_dir)  # the same precision policy as the server
    for q, sample in zip(QUESTIONS, _samples(tmp_path / "out", "tiny_mc"), strict=True):
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        ours = []
        for c in q["choices"]:  # lm-eval joins context and choice with " " (its target_delimiter)
            ours.append(float(lm.score(q["context"] + " " + c).token_logprobs[-(len(c) + 1):].sum()))
        assert theirs == pytest.approx(ours, abs=1e-5)
        assert sample["acc"] == float(int(np.argmax(ours)) == q["label"])  # the chosen answer is our argmax
    wants = []
    for p, sample in zip(PROMPTS, _samples(tmp_path / "out", "tiny_gen"), strict=True):
        wants.append(lm.generate(p["context"], max_new_tokens=10, temperature=0, stop=["\n"]))
        assert sample["filtered_resps"][0] == wants[-1]
    assert any(wants)  # something was generated, and it is what the API generates

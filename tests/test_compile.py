"""torch.compile (inductor) on CPU, so compile regressions show without a GPU: a compiled training step gives the
losses and weights of eager training, and the compiled decode step gives eager's logits and the uncached
reference's tokens past the block (the sliding window, a padded bucket of lanes, lanes released and compacted).

Inductor compiles slowly, so the models are tiny and each compiled shape is compiled once: the decode tests
share one model and reuse its compiled buckets. Dynamo is set to fail rather than silently fall back to eager
when it hits its recompile limit, and the tests check that nothing broke the graph (a graph break would still
give eager's answers but no longer compile the whole step). Skipped only where inductor finds no C++ compiler.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from scratchgpt.config import from_dict
from scratchgpt.generate import DecodeCore, Engine, Request
from scratchgpt.models.gpt import GPT, GPTConfig
from scratchgpt.sampling import SamplingSettings
from scratchgpt.train import train


def _no_cxx_reason() -> str | None:
    """Why inductor cannot build CPU kernels here (no C++ compiler), or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # a torch that moved these: let the tests run and say what breaks
        return None
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return "torch.compile's inductor finds no C++ compiler (install g++ or set CXX)"
    return None


NO_CXX = _no_cxx_reason()
pytestmark = pytest.mark.skipif(NO_CXX is not None, reason=str(NO_CXX))


@pytest.fixture(scope="module", autouse=True)
def dynamo_strict():
    """Fresh dynamo state; hitting the recompile limit fails instead of quietly running eagerly."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield counters
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _graph_breaks_per_test(dynamo_strict):
    dynamo_strict["graph_break"].clear()  # each test answers for the graph breaks of what it compiles


def assert_compiled_whole(counters) -> None:
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"


# ---- training --------------------------------------------------------------------------------------------

def _train_config(data_dir, compile: bool):
    # no dropout: inductor draws its own random numbers, so dropout masks would differ from eager's
    return from_dict({"data": {"dir": str(data_dir)},
                      "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0},
                      "train": {"max_iters": 6, "batch_size": 4, "grad_accum_steps": 2, "eval_interval": 100,
                                "eval_iters": 1, "log_interval": 1, "warmup_iters": 2, "device": "cpu",
                                "dtype": "float32", "threads": 1, "compile": compile}}, name="compile")


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_compiled_training_step_equals_eager(small_text_dir, tmp_path, dynamo_strict):
    compiled = train(_train_config(small_text_dir, True), out_dir=tmp_path / "compiled", progress=False)
    assert_compiled_whole(dynamo_strict)
    eager = train(_train_config(small_text_dir, False), out_dir=tmp_path / "eager", progress=False)
    a, b = _losses(compiled.run_dir), _losses(eager.run_dir)
    assert len(a) == 6 and a != pytest.approx([a[0]] * 6)  # six steps that moved the loss
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    wa, wb = load_file(compiled.run_dir / "model.safetensors"), load_file(eager.run_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:  # six AdamW steps on the same gradients up to float rounding
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-3, atol=1e-5, msg=name)


# ---- decoding --------------------------------------------------------------------------------------------

W = 16  # the block size: 3 * W new tokens slide the window many times


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=W, vocab_size=65, init_std=0.1)).eval()


@pytest.fixture(scope="module")
def compiled_engine(model) -> Engine:
    return Engine(model, compile=True)


def _prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 65, (n,), generator=g).tolist() for n in lengths]


PROMPTS = _prompts([3, W // 2 + 1, W - 1, W])  # 4 rows: one bucket of 4 lanes, compiled once


@pytest.mark.parametrize("window", ["full", "half"])
def test_compiled_greedy_decode_equals_eager_and_uncached_past_the_block(model, compiled_engine, window,
                                                                         dynamo_strict):
    s = SamplingSettings(max_new_tokens=3 * W, temperature=0, window=window)
    got = compiled_engine.generate_ids(PROMPTS, s)
    core = compiled_engine.core(len(PROMPTS))
    assert core.fixed_shapes and getattr(core._run_step, "_torchdynamo_orig_callable", None) == core._step
    assert_compiled_whole(dynamo_strict)
    assert got == Engine(model).generate_ids(PROMPTS, s)
    assert got == Engine(model).generate_ids(PROMPTS, s, use_cache=False)
    assert all(len(row) == 3 * W for row in got) and len({t for row in got for t in row}) > 3


def test_compiled_seeded_sampling_equals_uncached(model, compiled_engine):
    s = SamplingSettings(max_new_tokens=W + 5, temperature=0.9, top_k=20, seed=7)
    got = compiled_engine.generate_ids(PROMPTS[:2], s, num_samples=2)  # 2 prompts x 2 samples: the same 4 lanes
    assert got == Engine(model).generate_ids(PROMPTS[:2], s, num_samples=2, use_cache=False)
    assert got[0] != got[1]


def _decode_logits(core: DecodeCore, steps: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Greedy through a 4-lane `core`, requests coming and going: two requests of 1 and 2 rows (3 lanes of a
    bucket of 4, one padding), a third of one row joins while they run (all 4 lanes), then the first is
    released (the others move down one lane each: 3 lanes again). One bucket, so one compilation. Returns the
    active rows' logits at every step and the tokens of every step. The "half" window: past the block most
    tokens still go through the decode step ("full" re-prefills the block at every token)."""
    s = SamplingSettings(max_new_tokens=2 * steps, temperature=0, window="half")
    logits, tokens = [], []
    with torch.no_grad():
        first, second, third = (Request(p, 1, s) for p in ([PROMPTS[0]], PROMPTS[1:3], _prompts([5], seed=2)))
        core.add([first, second])
        for t in range(2 * steps):
            if t == steps // 2:
                core.add([third])
            if t == steps:
                core.release(first)
            sampled = core.sample()
            tokens.append([x.tokens.tolist() for x in sampled])
            logits.append(core.logits[: core.active].clone())
            core.advance(sampled)
        core.release(second)
        core.release(third)
    return logits, tokens


def test_compiled_decode_step_logits_equal_eager(model, compiled_engine, dynamo_strict):
    steps = 2 * W  # past the block before and after the release
    compiled = _decode_logits(compiled_engine.core(4), steps)  # the module's compiled core and bucket
    graph_shaped = _decode_logits(DecodeCore(model, 4, fixed_shapes=True), steps)  # the same step, eager
    plain = _decode_logits(DecodeCore(model, 4), steps)  # exactly the lanes and positions in use
    assert compiled[1] == graph_shaped[1] == plain[1]
    assert len(compiled[0]) == 2 * steps
    for c, g, p in zip(compiled[0], graph_shaped[0], plain[0], strict=True):
        torch.testing.assert_close(c, g, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, p, rtol=1e-4, atol=1e-5)
    assert_compiled_whole(dynamo_strict)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_decode_captured_in_cuda_graphs_equals_eager(model, dynamo_strict):
    """On CUDA a compiled core captures its compiled step as the CUDA graphs (one per bucket, at the core's
    first use): the fastest decode, and the combination the CPU cannot try."""
    gpu = copy.deepcopy(model).cuda()
    s = SamplingSettings(max_new_tokens=3 * W, temperature=0, window="half")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 matmuls alike in every path compared
    try:
        compiled = Engine(gpu, compile=True)
        got = compiled.generate_ids(PROMPTS[:2], s)
        assert compiled.core(2).graphed  # capture did not fall back to eager decoding
        assert_compiled_whole(dynamo_strict)
        assert got == Engine(gpu, cuda_graphs=False).generate_ids(PROMPTS[:2], s)
        assert got == Engine(gpu).generate_ids(PROMPTS[:2], s, use_cache=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32

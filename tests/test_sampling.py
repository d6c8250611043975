"""`sampling.sample_next` at the edges of temperature: tiny ones tend to greedy, never to NaN."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.sampling import SamplingSettings, sample_next


def _logits_with_a_clear_max(values: list[float], best: int) -> torch.Tensor:
    """One row whose entry `best` beats every other by at least 1 (so at T <= 1e-3 the rest have mass 0)."""
    row = torch.tensor(values, dtype=torch.float32)
    best %= len(values)
    row[best] = row.max() + 1.0
    return row


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=2, max_size=64),
       best=st.integers(0, 63), rows=st.integers(1, 3),
       temperature=st.floats(1e-40, 1e-3), top_k=st.one_of(st.none(), st.integers(1, 70)),
       top_p=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_tiny_temperatures_pick_the_argmax(values, best, rows, temperature, top_k, top_p, seed):
    logits = torch.stack([_logits_with_a_clear_max(values, best + r) for r in range(rows)])  # (B, V)
    s = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    got = sample_next(logits, s, torch.Generator().manual_seed(seed))
    assert got.shape == (rows,) and got.dtype == torch.int64
    assert torch.equal(got, logits.argmax(dim=-1))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-(2.0**100), 2.0**100, width=32), min_size=1, max_size=32),
       temperature=st.one_of(st.floats(5e-324, 1e-30), st.floats(1e-30, 1e30)), seed=st.integers(0, 2**31))
def test_any_temperature_gives_a_token_in_range(values, temperature, seed):
    """Ties, huge spreads and temperatures that round to 0 in float32: always a valid id, never NaN."""
    logits = torch.tensor([values], dtype=torch.float32)  # (1, V)
    got = sample_next(logits, SamplingSettings(temperature=temperature), torch.Generator().manual_seed(seed))
    assert 0 <= int(got[0]) < len(values)
    gaps = logits.max() - logits[0]
    if temperature <= 1e-30 and bool(((gaps == 0) | (gaps >= 1)).all()):  # every gap is then infinite
        assert logits[0, got[0]] == logits.max()


def test_the_argmax_at_a_temperature_below_float32s_smallest():
    logits = torch.tensor([[0.5, 3.0, -2.0, 2.999]])
    for t in (1e-46, 1e-300, 5e-324):
        assert int(sample_next(logits, SamplingSettings(temperature=t), torch.Generator().manual_seed(0))[0]) == 1


def test_ordinary_temperatures_still_sample():
    """Subtracting the max changes nothing for T = 1: the draw still follows softmax(logits)."""
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([sample_next(logits, SamplingSettings(), gen) for _ in range(4000)]),
                            minlength=3)
    assert (counts / 4000 - torch.tensor([0.7, 0.2, 0.1])).abs().max() < 0.03

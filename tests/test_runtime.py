"""The runtime's precision policy: the switch that forces the native-bf16 answer, what auto means per device
class and use, and inference weights cast once (no autocast) while training autocasts fp32 weights."""

from __future__ import annotations

import pytest
import torch

from scratchgpt import runtime
from scratchgpt.errors import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize("value, native", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_the_switch_forces_the_native_bf16_answer(monkeypatch, value, native):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, value)
    assert runtime.cpu_has_native_bf16() is native
    assert runtime.device_class(CPU) == ("cpu-bf16" if native else "cpu")
    for use in runtime.USES:
        assert runtime.resolve_dtype("auto", CPU, use) == runtime.POLICY[(runtime.device_class(CPU), use)]


def test_a_bad_switch_value_is_one_sentence(monkeypatch):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "maybe")
    with pytest.raises(UserError, match=runtime.NATIVE_BF16_ENV):
        runtime.cpu_has_native_bf16()


def test_named_dtypes_win_over_the_policy(monkeypatch):
    for value in ("1", "0"):
        monkeypatch.setenv(runtime.NATIVE_BF16_ENV, value)
        assert runtime.resolve_dtype("float32", CPU, "infer") == torch.float32
        assert runtime.resolve_dtype("bfloat16", CPU, "train") == torch.bfloat16


def test_inference_casts_the_weights_and_training_autocasts():
    model = torch.nn.Linear(4, 4)
    infer = runtime.setup("cpu", "bfloat16", use="infer")
    prepared = infer.prepare(model)
    assert prepared.weight.dtype == torch.bfloat16 and not prepared.training
    with infer.autocast():
        assert not torch.is_autocast_enabled("cpu")  # the weights already are the dtype
    train = runtime.setup("cpu", "bfloat16", use="train")
    with train.autocast():
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        runtime.setup("cpu", "auto", use="serve")

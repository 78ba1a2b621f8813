"""Cached constants are real CPU float64 tensors whatever the context that first asks."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from escn_plugin.common.default_dtype import cached_constant, default_dtype


def _counting_constant():
    calls = []

    @cached_constant
    def ramp(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.arange(n) / 2.0  # default dtype and device

    return ramp, calls


def test_constant_first_built_under_fake_mode_is_real():
    ramp, calls = _counting_constant()
    with FakeTensorMode():
        first = ramp(4)
    assert not isinstance(first, FakeTensor)
    assert first.device.type == "cpu" and first.dtype == torch.float64
    assert ramp(4).tolist() == [0.0, 0.5, 1.0, 1.5] and calls == [4]


def test_constant_first_built_under_meta_and_float32_is_real():
    ramp, _ = _counting_constant()
    with torch.device("meta"), default_dtype(torch.float32):
        first = ramp(3)
    assert not first.is_meta and first.dtype == torch.float64


def test_default_dtype_restores_on_error():
    before = torch.get_default_dtype()
    inside = torch.float16 if before != torch.float16 else torch.float64
    with pytest.raises(RuntimeError, match="inside"), default_dtype(inside):
        assert torch.get_default_dtype() == inside
        raise RuntimeError("inside")
    assert torch.get_default_dtype() == before

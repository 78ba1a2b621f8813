"""Run a block with a given torch default dtype, restoring the previous one afterwards;
build and cache constants on the CPU in float64 whatever the caller's device and dtype.

Some library code creates tensors in torch's default dtype whatever it is asked for:
e3nn's grid helpers and fairchem's sphere points (our cached float64 constants must not
depend on the caller's default), fairchem's ``radius_graph_pbc`` (float32 only) and
fairchem's ``set_wigner`` (allocates in the default dtype). Constants that depend only on
(lmax, mmax, grid) are cached per process: :func:`cached_constant` builds them under
``torch.device("cpu")`` and float64, so a model built under ``torch.device("meta")`` (deferred
initialisation, parameter counting) neither fails on them nor leaves meta tensors in the
cache for the real builds that follow.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

__all__ = ["cached_constant", "constants", "default_dtype", "float64_default"]

T = TypeVar("T")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``with default_dtype(torch.float64): ...``"""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def float64_default() -> contextlib.AbstractContextManager[None]:
    """``default_dtype(torch.float64)``: how every cached constant is built."""
    return default_dtype(torch.float64)


@contextlib.contextmanager
def constants() -> Iterator[None]:
    """Real CPU float64 tensors, whatever the ambient device (``meta`` included), default
    dtype or fake-tensor mode (``FakeTensorMode`` tracing, ``torch.compile``): a constant
    cached while tracing must stay usable by the real calls that follow."""
    with unset_fake_temporarily(), torch.device("cpu"), default_dtype(torch.float64):
        yield


def cached_constant(fn: Callable[..., T]) -> Callable[..., T]:
    """``functools.cache`` whose computation runs under :func:`constants`."""

    @functools.cache
    @functools.wraps(fn)
    def build(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with constants():
            return fn(*args, **kwargs)

    return build

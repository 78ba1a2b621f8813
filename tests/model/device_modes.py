"""CUDA stand-ins for catching device mix-ups on a machine without a GPU (CI).

Two tools, both raising where real CUDA would ("Expected all tensors to be on the same
device" / "found two different devices"), with CPU scalars (0-dim) allowed as CUDA allows:

* :func:`fake_cuda`: torch's ``FakeTensorMode`` with CUDA-device fake tensors (shapes and
  devices only, no values). It also refuses every data-dependent operation (``.item()``,
  ``bool(t)``, ``nonzero``, ``unique``): code that runs under it has no host-device
  synchronisation of that kind. :class:`HostToDevice` additionally records copies from the
  host to the device (``torch.tensor(list, device=cuda)``: a synchronising copy per call).
* :func:`simulated_cuda`: tensors that say they are on CUDA but hold CPU data
  (:class:`SimulatedCuda`), for code with data-dependent control flow (input checks, the
  neighbour list, the block plan): it runs for real, and mixing raises.

``Tensor.__getitem__`` / ``__setitem__`` set a CUDA device guard before they dispatch,
which initialises CUDA and fails without a driver; both tools route indexing around it
(:class:`_GuardFreeIndexing` for fake tensors, :meth:`SimulatedCuda.__torch_function__`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
META = torch.device("meta")
aten = torch.ops.aten
#: Tensor methods that set a CUDA device guard before they dispatch
_INDEXING = (torch.Tensor.__getitem__, torch.Tensor.__setitem__)
_UNARY = (torch.Tensor.__invert__, torch.Tensor.nonzero, torch.nonzero)


@contextlib.contextmanager
def _overwrite_params() -> Iterator[None]:
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)


# --- FakeTensorMode ---------------------------------------------------------------------


#: host reads guard the device too (and the fake mode refuses them: data-dependent)
_HOST_READS = (
    torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
    torch.Tensor.__index__, torch.Tensor.item, torch.Tensor.tolist,
)  # fmt: skip
_GUARDED = _INDEXING + _UNARY + _HOST_READS


class _GuardFreeIndexing(TorchFunctionMode):
    """Run indexing (and host reads) with the fake tensors' device set to meta (whose
    guard does nothing), then put CUDA back on the result."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func not in _GUARDED:
            return func(*args, **kwargs)
        fakes = [t for t in tree_leaves((args, kwargs)) if isinstance(t, FakeTensor)]
        devices = [t.fake_device for t in fakes]
        for t in fakes:
            t.fake_device = META
        try:
            out = func(*args, **kwargs)
        finally:
            for t, device in zip(fakes, devices):
                t.fake_device = device
        if isinstance(out, FakeTensor) and out.fake_device == META:
            out.fake_device = devices[0]  # the indexed tensor's
        return out


class HostToDevice(TorchDispatchMode):
    """Records host -> device copies (``ops``) made while active (inside a fake mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in (aten._to_copy.default, aten.copy_.default, aten.lift_fresh.default):
            source = args[1] if func is aten.copy_.default else args[0]
            target = args[0].device if func is aten.copy_.default else kwargs.get("device")
            if func is aten.lift_fresh.default or (
                source.device.type == "cpu" and target is not None and target.type == "cuda"
            ):
                self.ops.append(f"{func} of {tuple(source.shape)}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """FakeTensorMode (no real tensors allowed in) with guard-free indexing, no grad."""
    with FakeTensorMode(allow_non_fake_inputs=False) as mode, _GuardFreeIndexing():
        with torch.no_grad():
            yield mode


def to_fake(t: torch.Tensor, device: torch.device = CUDA) -> torch.Tensor:
    """A fake tensor of ``t``'s shape, strides and dtype on ``device`` (call inside
    :func:`fake_cuda`)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def fake_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters and buffers are fake CUDA tensors (inside
    :func:`fake_cuda`; parameters without grad: a CUDA AccumulateGrad needs a driver)."""
    with _disable_current_modes():  # copy the real tensors as real tensors
        module = copy.deepcopy(module).requires_grad_(False)
    with _overwrite_params():
        return module._apply(to_fake)


# --- simulated CUDA (real CPU data) -------------------------------------------------------


def _is_cpu(t: torch.Tensor) -> bool:
    return not isinstance(t, SimulatedCuda)


def _check_devices(func, args, kwargs) -> None:  # noqa: ANN001
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    cuda = any(not _is_cpu(t) for t in tensors)
    cpu = [t for t in tensors if _is_cpu(t) and t.dim() > 0]
    if cuda and cpu:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"cuda:0 and cpu! ({func}: CPU tensor of shape {tuple(cpu[0].shape)})"
        )


def _unwrap(value):  # noqa: ANN001, ANN202
    return value.inner if isinstance(value, SimulatedCuda) else value


def _wrap(value):  # noqa: ANN001, ANN202
    if isinstance(value, torch.Tensor) and not isinstance(value, SimulatedCuda):
        return SimulatedCuda(value)
    return value


class SimulatedCuda(torch.Tensor):
    """A tensor on "cuda:0" whose data is the CPU tensor ``inner``; operations run on the
    CPU, and operations that mix it with non-scalar CPU tensors raise.

    Its device is reported from Python (``dispatch_device``): while the C++ bindings that
    set a device guard first run (indexing, ``~``, ``bool``, ``int``, ...) it reads "cpu",
    so CUDA is never touched; everywhere else it reads "cuda" (composite operations make
    their tensors on it). The operations reach ``__torch_dispatch__``, which checks
    devices on the wrapper types.
    """

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> SimulatedCuda:
        t = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=CUDA, requires_grad=False, dispatch_device=True,
        )  # fmt: skip
        t.inner = inner
        t.reported_device = CUDA
        return t

    @property
    def device(self) -> torch.device:  # noqa: D102
        return self.reported_device

    def __repr__(self) -> str:  # noqa: D105
        return f"SimulatedCuda({self.inner!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if func is torch.Tensor.device.__get__:
            return args[0].reported_device
        if func is torch.Tensor.tolist:  # a copy to the host (real CUDA: a synchronisation)
            return args[0].inner.tolist()
        simulated = [t for t in tree_leaves((args, kwargs)) if isinstance(t, SimulatedCuda)]
        if func not in _GUARDED:  # composites read the device to make tensors (one_hot)
            try:
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*args, **kwargs)
            except RuntimeError as error:  # a binding with a device guard not listed
                if "CUDA" not in str(error) and "NVIDIA" not in str(error):
                    raise
        for t in simulated:
            t.reported_device = CPU  # what the bindings' device guards see
        try:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        finally:
            for t in simulated:
                t.reported_device = CUDA

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        return _simulated_dispatch(func, args, kwargs or {})


def _simulated_dispatch(func, args, kwargs):  # noqa: ANN001, ANN202
    if func is torch.ops.prim.device.default:  # the device the C++ side sees
        return args[0].reported_device if isinstance(args[0], SimulatedCuda) else CPU
    device = kwargs.get("device")
    if func is aten._to_copy.default and device is not None:  # an explicit transfer
        out = func(_unwrap(args[0]), **{**kwargs, "device": torch.device("cpu")})
        return _wrap(out) if torch.device(device).type == "cuda" else out
    if func is aten.copy_.default:
        target, source = args[0], args[1]
        func(_unwrap(target), _unwrap(source), *args[2:], **kwargs)
        return target
    if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
        _check_devices(func, [args[0], *args[2:]], kwargs)  # CPU indices are allowed
    else:
        _check_devices(func, args, kwargs)
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    on_cuda = on_cuda or any(isinstance(t, SimulatedCuda) for t in tree_leaves((args, kwargs)))
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    return tree_map(_wrap, out) if on_cuda else out


class _SimulatedFactories(TorchDispatchMode):
    """Factory calls with ``device=cuda`` (``torch.zeros(..., device=x.device)``) make
    simulated tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return _simulated_dispatch(func, args, kwargs or {})


@contextlib.contextmanager
def simulated_cuda() -> Iterator[None]:
    """Run with simulated CUDA tensors: factories for "cuda" make them, and CUDA is never
    initialised (``torch.tensor(data, device=cuda)`` is lifted on the CPU first, as under
    FakeTensorMode)."""
    lazy_init = torch.cuda._lazy_init
    torch.cuda._lazy_init = lambda: None
    torch._C._set_only_lift_cpu_tensors(True)
    try:
        with _SimulatedFactories(), torch.no_grad():
            yield
    finally:
        torch._C._set_only_lift_cpu_tensors(False)
        torch.cuda._lazy_init = lazy_init


def simulated_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with :class:`SimulatedCuda` parameters and buffers."""
    module = copy.deepcopy(module).requires_grad_(False)
    with _overwrite_params():
        return module._apply(lambda t: _wrap(t.detach()))


def simulated_batch(batch):  # noqa: ANN001, ANN201
    """A copy of a PyG batch with every tensor simulated on CUDA."""
    return batch.clone().apply(_wrap)

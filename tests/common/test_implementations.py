"""Named implementations: unknown names fail listing the registered ones; the Euler-angle
rotation backend agrees with the default polynomial one on generic edges."""

from __future__ import annotations

import pytest
import torch

import escn_plugin.so2  # noqa: F401  (registers SO(2) implementations)
import escn_plugin.so3  # noqa: F401  (registers rotation backends)
from escn_plugin.common.implementations import ROTATION_BACKENDS, SO2_IMPLEMENTATIONS, Registry
from escn_plugin.so2 import SO2Convolution
from escn_plugin.so3 import CoefficientLayout, EdgeRotation, EulerEdgeRotation
from escn_plugin.so3.rotation import WignerBlockLayout

F64 = torch.float64


def test_rotation_backends_registered() -> None:
    assert {"euler", "polynomial"} <= set(ROTATION_BACKENDS.names())
    assert ROTATION_BACKENDS.get("polynomial") is EdgeRotation
    assert ROTATION_BACKENDS.get("euler") is EulerEdgeRotation
    assert SO2_IMPLEMENTATIONS.get("escn") is SO2Convolution


def test_unknown_rotation_backend_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        ROTATION_BACKENDS.get("nope")
    message = str(info.value)
    assert "euler" in message and "polynomial" in message
    assert "rotation_backend" in message  # names the config option to fix


def test_unknown_so2_impl_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="escn") as info:
        SO2_IMPLEMENTATIONS.build("nope")
    assert "so2_impl" in str(info.value)


def test_duplicate_registration_raises() -> None:
    registry = Registry("thing", "thing_option")

    @registry.register("a")
    class A:
        """A registered class."""

    registry.register("a")(A)  # same class again: fine
    with pytest.raises(ValueError, match="already registered"):

        @registry.register("a")
        class B:
            """Another class under a taken name."""


@pytest.mark.parametrize(("lmax_list", "mmax_list"), [([4], [2]), ([6], [6]), ([4, 3], [2, 1])])
def test_euler_matches_polynomial_on_generic_edges(lmax_list, mmax_list) -> None:
    layout = CoefficientLayout(lmax_list, mmax_list)
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(16, 3, dtype=F64, generator=gen) * 2.0
    polynomial_backend = ROTATION_BACKENDS.build("polynomial", layout)
    polynomial = polynomial_backend(vectors)  # [E, nnz] block-sparse entries
    euler = ROTATION_BACKENDS.build("euler", layout)(vectors)
    assert polynomial.shape == euler.shape == (16, WignerBlockLayout(layout).nnz)
    assert (polynomial - euler).abs().max() <= 1e-9
    dense = polynomial_backend.to_dense(polynomial)
    assert dense.shape == (16, layout.num_m_major, layout.num_full)
    assert torch.count_nonzero(dense) == polynomial.count_nonzero()


def test_euler_backend_keeps_float32() -> None:
    layout = CoefficientLayout([3], [2])
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(5, 3, dtype=F64, generator=gen)
    euler = ROTATION_BACKENDS.build("euler", layout)(vectors.float())
    assert euler.dtype == torch.float32
    polynomial = ROTATION_BACKENDS.build("polynomial", layout)(vectors)
    assert (euler.double() - polynomial).abs().max() <= 1e-5

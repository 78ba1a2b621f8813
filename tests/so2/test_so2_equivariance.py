"""The learned SO(2) block inside rotate -> SO(2) -> rotate back is SO(3) equivariant and
independent of the edge frame's roll (random global rotations, float64, <= 1e-10)."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from escn_plugin.so2 import SO2Convolution
from escn_plugin.so3 import CoefficientLayout, EdgeRotation, edge_frame, wigner_d

F64 = torch.float64
CHANNELS, HIDDEN, EDGE_CHANNELS = 3, 5, 4
NUM_EDGES = 6
LAYOUTS = [([2], [1]), ([4], [2]), ([6], [3]), ([4, 3], [2, 1]), ([3], [3])]


def _wigner_full(layout: CoefficientLayout, rot: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` rotation of a full (multi-resolution) l-major embedding."""
    return torch.block_diag(*[wigner_d(rot, lmax) for lmax in layout.lmax_list])


class Setup:
    def __init__(self, lmax_list: list[int], mmax_list: list[int], seed: int = 0) -> None:
        torch.manual_seed(seed)  # module init
        self.layout = CoefficientLayout(lmax_list, mmax_list)
        self.conv = SO2Convolution(self.layout, CHANNELS, HIDDEN, EDGE_CHANNELS).double()
        self.rotation = EdgeRotation(self.layout)
        gen = torch.Generator().manual_seed(seed + 1)
        self.vectors = torch.randn(NUM_EDGES, 3, dtype=F64, generator=gen) * 2.0
        self.x = torch.randn(NUM_EDGES, self.layout.num_full, CHANNELS, dtype=F64, generator=gen)
        self.x_edge = torch.randn(NUM_EDGES, EDGE_CHANNELS, dtype=F64, generator=gen)

    def message(
        self, vectors: torch.Tensor, x: torch.Tensor, roll: torch.Tensor | None = None
    ) -> torch.Tensor:
        w = self.rotation.to_dense(self.rotation(vectors, roll))  # [E, K_M, K]
        y = self.conv(w @ x, self.x_edge)  # [E, K_M, C]; x_edge is rotation invariant
        return w.transpose(-1, -2) @ y  # [E, K, C]


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_equivariant_under_random_rotations(lmax_list, mmax_list) -> None:
    setup = Setup(lmax_list, mmax_list)
    out = setup.message(setup.vectors, setup.x)
    assert out.abs().max() > 1e-3
    torch.manual_seed(7)
    for rot in o3.rand_matrix(3, dtype=F64):
        d = _wigner_full(setup.layout, rot)  # [K, K]
        x_rot = d @ setup.x
        vectors_rot = setup.vectors @ rot.T
        assert (x_rot - setup.x).abs().max() > 1e-3  # the test input really changes
        assert (vectors_rot - setup.vectors).abs().max() > 1e-3
        out_rot = setup.message(vectors_rot, x_rot)
        assert (out_rot - out).abs().max() > 1e-3  # ...and so does the output
        assert (out_rot - d @ out).abs().max() <= 1e-10


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_invariant_to_frame_roll(lmax_list, mmax_list) -> None:
    setup = Setup(lmax_list, mmax_list, seed=3)
    gen = torch.Generator().manual_seed(4)
    roll = torch.rand(NUM_EDGES, dtype=F64, generator=gen) * 2 * math.pi
    w_plain, w_roll = setup.rotation(setup.vectors), setup.rotation(setup.vectors, roll)
    assert (w_plain - w_roll).abs().max() > 1e-3  # the frames really differ
    out = setup.message(setup.vectors, setup.x)
    out_roll = setup.message(setup.vectors, setup.x, roll)
    assert (out_roll - out).abs().max() <= 1e-10


def test_equivariant_for_axis_and_near_pole_edges() -> None:
    """Rotating onto / off the +-y axis (frame chart changes) keeps the identity exact."""
    setup = Setup([4], [2], seed=5)
    eye = torch.eye(3, dtype=F64)
    tilt = torch.tensor([1e-7, 0.0, 2e-7], dtype=F64)
    vectors = torch.cat(
        [eye[:2] * 1.3, -eye[1:] * 2.0, (eye[1] + tilt)[None], (-eye[1] + tilt)[None]]
    )
    out = setup.message(vectors, setup.x)
    torch.manual_seed(8)
    rot = o3.rand_matrix(dtype=F64)
    d = _wigner_full(setup.layout, rot)
    assert (setup.message(vectors @ rot.T, d @ setup.x) - d @ out).abs().max() <= 1e-10
    # and the other way round: a rotation that puts a generic edge onto +y
    out = setup.message(setup.vectors, setup.x)
    rot = edge_frame(setup.vectors[:1])[0]
    rotated = setup.vectors @ rot.T
    assert (rotated[0, [0, 2]]).abs().max() <= 1e-14
    d = _wigner_full(setup.layout, rot)
    assert (setup.message(rotated, d @ setup.x) - d @ out).abs().max() <= 1e-10


def test_control_non_equivariant_block_is_caught() -> None:
    """Control: breaking the SO(2) structure (a bias on the m > 0 outputs) breaks the
    identity, so the tolerance above is meaningful."""
    setup = Setup([4], [2], seed=6)
    with torch.no_grad():
        setup.conv.orders[0].out_r.bias = torch.nn.Parameter(
            torch.randn(setup.conv.orders[0].out_r.out_features, dtype=F64)
        )
    out = setup.message(setup.vectors, setup.x)
    torch.manual_seed(9)
    rot = o3.rand_matrix(dtype=F64)
    d = _wigner_full(setup.layout, rot)
    out_rot = setup.message(setup.vectors @ rot.T, d @ setup.x)
    assert (out_rot - d @ out).abs().max() > 1e-3

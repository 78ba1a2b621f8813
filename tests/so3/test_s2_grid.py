"""S2 grids: exact round trips on band-limited coefficients, agreement with e3nn's
ToS2Grid / FromS2Grid, resolution rules, and the layout-aware projections."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3
from e3nn.o3 import FromS2Grid, ToS2Grid
from torch import nn

from escn_plugin.common.default_dtype import default_dtype
from escn_plugin.so3 import (
    CoefficientLayout,
    EdgeGridActivation,
    grid_resolution,
    node_grid_sampler,
    s2_grid_matrices,
)
from escn_plugin.so3.s2_grid import gauss_legendre_matrices, gauss_legendre_points

F64 = torch.float64
LM_PAIRS = [(1, 1), (2, 1), (3, 3), (4, 2), (6, 2), (6, 3), (6, 6), (8, 4)]


def _abs_m(lmax: int) -> torch.Tensor:
    return torch.cat([torch.arange(-l, l + 1).abs() for l in range(lmax + 1)])


@pytest.mark.parametrize(("lmax", "mmax"), LM_PAIRS)
def test_default_resolution(lmax: int, mmax: int) -> None:
    res_alpha = 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1
    assert grid_resolution(lmax, mmax) == (2 * (lmax + 1), res_alpha)


def test_resolution_overrides() -> None:
    assert grid_resolution(4, 2, 20) == (20, 20)
    assert grid_resolution(4, 2, (18, 13)) == (18, 13)
    assert grid_resolution(4, 2, [18, 13]) == (18, 13)
    with pytest.raises(ValueError, match="pair"):
        grid_resolution(4, 2, (18, 13, 2))
    with pytest.raises(ValueError, match="positive"):
        grid_resolution(4, 2, 0)
    with pytest.raises(ValueError, match="positive"):
        grid_resolution(4, 2, (18, -1))


@pytest.mark.parametrize(("lmax", "mmax"), LM_PAIRS)
def test_round_trip_default_resolution(lmax: int, mmax: int) -> None:
    """from_grid^T to_grid = I on the |m| <= mmax coefficients, at float64 precision."""
    to_grid, from_grid = s2_grid_matrices(lmax, *grid_resolution(lmax, mmax))
    assert to_grid.dtype == F64 and from_grid.dtype == F64
    keep = _abs_m(lmax) <= mmax
    gram = from_grid[:, keep].T @ to_grid[:, keep]
    assert (gram - torch.eye(int(keep.sum()), dtype=F64)).abs().max() <= 1e-12


@pytest.mark.parametrize(("lmax", "mmax"), [(2, 1), (4, 2), (6, 3)])
def test_coarse_alpha_grid_is_not_exact_beyond_mmax(lmax: int, mmax: int) -> None:
    """Control: the default alpha grid resolves only |m| <= mmax (so the check above is
    not vacuous)."""
    to_grid, from_grid = s2_grid_matrices(lmax, *grid_resolution(lmax, mmax))
    gram = from_grid.T @ to_grid
    assert (gram - torch.eye(gram.shape[0], dtype=F64)).abs().max() > 1e-2


@pytest.mark.parametrize(("lmax", "res"), [(2, (6, 7)), (4, (10, 9)), (6, (14, 15)), (4, (12, 20))])
def test_matches_e3nn_grids(lmax: int, res: tuple[int, int]) -> None:
    to_grid, from_grid = s2_grid_matrices(lmax, *res)
    assert to_grid.shape == (res[0] * res[1], (lmax + 1) ** 2)
    gen = torch.Generator().manual_seed(lmax)
    x = torch.randn(5, (lmax + 1) ** 2, dtype=F64, generator=gen)
    with default_dtype(F64):
        to_s2 = ToS2Grid(lmax, res, normalization="integral", dtype=F64)
        from_s2 = FromS2Grid(res, lmax, normalization="integral", dtype=F64)
    ref_grid = to_s2(x)  # [5, beta, alpha]
    assert ref_grid.shape == (5, *res)
    assert (x @ to_grid.T - ref_grid.reshape(5, -1)).abs().max() <= 1e-12

    signal = torch.randn(5, *res, dtype=F64, generator=gen)
    ref_coeff = from_s2(signal)  # [5, K]
    assert (signal.reshape(5, -1) @ from_grid - ref_coeff).abs().max() <= 1e-12


def test_matrices_are_cached() -> None:
    assert s2_grid_matrices(3, 8, 9)[0] is s2_grid_matrices(3, 8, 9)[0]


def test_matrices_float64_accurate_under_float32_default() -> None:
    """Regression: the first (cached) build must not depend on the caller's default dtype
    (e3nn's quadrature weights follow the default dtype; under float32 the round trip was
    only accurate to ~1e-7)."""
    lmax, res = 5, (12, 13)
    with default_dtype(torch.float32):
        s2_grid_matrices.cache_clear()
        to_grid, from_grid = s2_grid_matrices(lmax, *res)
    gram = from_grid.T @ to_grid
    assert (gram - torch.eye(gram.shape[0], dtype=F64)).abs().max() <= 1e-12


@pytest.mark.parametrize(
    ("lmax_list", "mmax_list", "resolution"),
    [([2], [1], None), ([4], [2], None), ([6], [3], None), ([4], [4], None), ([4], [2], 16)]
    + [([4, 3], [2, 1], None), ([4, 3], [2, 1], (14, 11))],
)
def test_edge_grid_identity_activation(lmax_list, mmax_list, resolution) -> None:
    """With act = Identity the grid round trip is the identity on m-major coefficients."""
    layout = CoefficientLayout(lmax_list, mmax_list)
    module = EdgeGridActivation(layout, nn.Identity(), resolution)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, layout.num_m_major, 4, dtype=F64, generator=gen)
    y = module(x)
    assert y.shape == x.shape and y.dtype == F64
    assert (y - x).abs().max() <= 1e-12


def test_edge_grid_activation_acts_pointwise() -> None:
    """A non-linear act is applied to the grid values of the m-major coefficients."""
    layout = CoefficientLayout([4], [2])
    module = EdgeGridActivation(layout, nn.SiLU())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, layout.num_m_major, 3, dtype=F64, generator=gen)
    to_grid, from_grid = s2_grid_matrices(4, *grid_resolution(4, 2))
    lm = layout.lm_index(layout.m_major)
    expected = from_grid[:, lm].T @ torch.nn.functional.silu(to_grid[:, lm] @ x)
    assert (module(x) - expected).abs().max() <= 1e-12
    assert (module(x) - x).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("lmax_list", "mmax_list", "resolution"),
    [([2], [2], None), ([4], [2], None), ([6], [2], None), ([4, 3], [2, 1], None)]
    + [([4, 3], [2, 1], 12)],
)
def test_node_grid_sampler_round_trip(lmax_list, mmax_list, resolution) -> None:
    layout = CoefficientLayout(lmax_list, mmax_list)
    sampler = node_grid_sampler(layout, resolution)
    channels = 3
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, layout.num_full, channels, dtype=F64, generator=gen)
    values = sampler(x)
    res = grid_resolution(layout.lmax, layout.lmax, resolution)
    assert values.shape == (4, res[0] * res[1], layout.num_resolutions * channels)
    back = sampler.inverse(values)
    assert back.shape == x.shape
    assert (back - x).abs().max() <= 1e-12


def test_node_grid_sampler_values_per_resolution() -> None:
    """Each resolution's channels hold the grid values of that resolution's block only."""
    layout = CoefficientLayout([4, 3], [2, 1])
    sampler = node_grid_sampler(layout)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, layout.num_full, 5, dtype=F64, generator=gen)
    values = sampler(x)  # [2, G, 2 * 5]
    to_grid, _ = s2_grid_matrices(4, *grid_resolution(4, 4))
    block0 = x[:, layout.res_slice(0)]
    block1 = x[:, layout.res_slice(1)]
    assert (values[..., :5] - to_grid @ block0).abs().max() <= 1e-12
    assert (values[..., 5:] - to_grid[:, :16] @ block1).abs().max() <= 1e-12


@pytest.mark.parametrize(("lmax", "res"), [(2, (6, 5)), (2, (24, 25)), (4, (10, 9)), (6, (20, 21))])
def test_gauss_legendre_grid_round_trip_and_convention(lmax: int, res: tuple[int, int]) -> None:
    """Half the polar points of e3nn's grid; from^T to = I; the values are those of e3nn's
    spherical harmonics ('integral') at the grid's unit points; weights sum to 4 pi."""
    points, weights = gauss_legendre_points(*res)
    to_grid, from_grid = gauss_legendre_matrices(lmax, *res)
    assert to_grid.shape == (res[0] // 2 * res[1], (lmax + 1) ** 2)
    assert (points.norm(dim=1) - 1).abs().max() <= 1e-14
    assert abs(weights.sum().item() - 4 * math.pi) <= 1e-12
    gram = from_grid.T @ to_grid
    assert (gram - torch.eye(gram.shape[0], dtype=F64)).abs().max() <= 1e-12
    equiangular, _ = s2_grid_matrices(lmax, *res)
    sh = o3.spherical_harmonics(list(range(lmax + 1)), points, False, normalization="integral")
    assert (to_grid - sh).abs().max() == 0
    assert equiangular.shape[0] == 2 * to_grid.shape[0]


@pytest.mark.parametrize("res", [(16, 17), (24, 25)])
def test_gauss_legendre_aliases_like_the_equiangular_grid(res: tuple[int, int]) -> None:
    """The projection of SiLU(f) (not band-limited) onto l <= 2 on either grid is off from a
    fine grid's by the same amount: same polynomial exactness, half the points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, dtype=F64, generator=gen)

    def project(to_grid, from_grid):
        return from_grid.T @ torch.nn.functional.silu(to_grid @ x)

    exact = project(*s2_grid_matrices(2, 96, 97))
    err_eq = (project(*s2_grid_matrices(2, *res)) - exact).abs().max().item()
    err_gl = (project(*gauss_legendre_matrices(2, *res)) - exact).abs().max().item()
    assert 0 < err_gl < 1.2 * err_eq and err_eq < 1.2 * err_gl
    coarse = (project(*gauss_legendre_matrices(2, res[0] - 8, res[1] - 8)) - exact).abs().max()
    assert coarse > 10 * err_gl  # the comparison resolves the grid size

"""S2 grids: coefficients <-> values on a (beta, alpha) grid, as precomputed matrices.

Grid and normalisation are e3nn's ``ToS2Grid`` / ``FromS2Grid`` with
``normalization="integral"`` (the reference eSCN's choice), so grid values and round
trips match it exactly. For a single-resolution coefficient vector x [K] (l-major):

    f(g)  = sum_k to_grid[g, k]   x[k]        (G = res_beta * res_alpha grid points)
    x'[k] = sum_g from_grid[g, k] f(g)        (quadrature; x' = x for band-limited f)

Default resolution, as in the reference: res_beta = 2 (lmax + 1) and
res_alpha = 2 mmax + 1 (2 (mmax + 1) + 1 when mmax = lmax); ``resolution`` overrides it,
either one int for both or a (res_beta, res_alpha) pair. A finer grid makes the point-wise
non-linearities closer to exactly equivariant.

The matrices are built once per (lmax, res) in float64 and cached; models register the
column subsets they need as buffers.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from e3nn import o3
from e3nn.o3 import FromS2Grid, ToS2Grid

from escn_plugin.common.default_dtype import cached_constant, constants

__all__ = ["grid_resolution", "s2_grid_matrices"]


def grid_resolution(
    lmax: int,
    mmax: int,
    resolution: int | tuple[int, int] | list[int] | None = None,
    name: str = "resolution",
) -> tuple[int, int]:
    """(res_beta, res_alpha) of the grid used for degree ``lmax`` and order ``mmax``.

    An explicit ``resolution`` (one int for both axes or a [res_beta, res_alpha] pair of
    ints) must carry degree ``lmax`` there and back, as e3nn requires: an even res_beta
    >= 2 (lmax + 1), both positive. Errors name the config key ``name``.
    """
    if resolution is not None:
        res = [resolution, resolution] if is_int(resolution) else resolution
        if not (isinstance(res, (list, tuple)) and len(res) == 2 and all(map(is_int, res))):
            raise ValueError(
                f"{name} must be an int or a [res_beta, res_alpha] pair, got {resolution!r}"
            )
        res_beta, res_alpha = (int(r) for r in res)
        if min(res_beta, res_alpha) < 1:
            raise ValueError(f"{name} must be positive, got {resolution!r}")
        if res_beta % 2 or res_beta < 2 * (lmax + 1):
            raise ValueError(
                f"{name} {resolution!r} is too coarse or odd: res_beta must be even and >= "
                f"{2 * (lmax + 1)} (2 (lmax + 1) for lmax {lmax})"
            )
        return res_beta, res_alpha
    res_alpha = 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1
    return 2 * (lmax + 1), res_alpha


@cached_constant
def s2_grid_matrices(lmax: int, res_beta: int, res_alpha: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_grid [G, K]`` and ``from_grid [G, K]`` (float64), K = (lmax+1)^2, G = beta*alpha.

    Point g = b * res_alpha + a (beta-major, as e3nn's grids).
    """
    res = (res_beta, res_alpha)
    # e3nn's quadrature weights are computed in the *default* dtype whatever ``dtype`` says
    # (``2.0 * arange(...)`` in ``_quadrature_weights``): cached_constant builds under a
    # float64 default, so the matrices do not depend on the caller's default dtype.
    to_s2 = ToS2Grid(lmax, res, normalization="integral", dtype=torch.float64)
    from_s2 = FromS2Grid(res, lmax, normalization="integral", dtype=torch.float64)
    to_grid = torch.einsum("mbi,am->bai", to_s2.shb, to_s2.sha)  # [b, a, K]
    from_grid = torch.einsum("am,mbi->bai", from_s2.sha, from_s2.shb)  # [b, a, K]
    num_coeff = (lmax + 1) ** 2
    return to_grid.reshape(-1, num_coeff), from_grid.reshape(-1, num_coeff)


@cached_constant
def gauss_legendre_points(res_beta: int, res_alpha: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[G, 3]`` and weights ``[G]`` (sum 4 pi) of the Gauss-Legendre product grid:
    ``res_beta // 2`` polar nodes, ``res_alpha`` equally spaced azimuths, beta-major.

    e3nn's grid places res_beta equiangular polar points whose quadrature is exact for
    polynomials in cos(beta) of degree < res_beta; n Gauss-Legendre nodes are exact up to
    degree 2n - 1, so res_beta // 2 of them integrate the same degree with half the points.
    Points follow e3nn's angle convention (``o3.angles_to_xyz``: y is the pole).
    """
    n = res_beta // 2
    nodes, weights = np.polynomial.legendre.leggauss(n)  # cos(beta) in (-1, 1), sum 2
    beta = torch.as_tensor(np.arccos(nodes), dtype=torch.float64)  # [n]
    alpha = torch.arange(res_alpha, dtype=torch.float64) * (2 * math.pi / res_alpha)  # [A]
    points = o3.angles_to_xyz(alpha[None, :], beta[:, None]).reshape(-1, 3)  # [G, 3]
    w = torch.as_tensor(weights, dtype=torch.float64)[:, None] * (2 * math.pi / res_alpha)
    return points, w.expand(n, res_alpha).reshape(-1)


@cached_constant
def gauss_legendre_matrices(
    lmax: int, res_beta: int, res_alpha: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`s2_grid_matrices` (same coefficients, e3nn 'integral' normalisation: values
    ``to_grid @ x`` and quadrature ``from_grid``) on :func:`gauss_legendre_points`."""
    points, weights = gauss_legendre_points(res_beta, res_alpha)
    to_grid = o3.spherical_harmonics(
        list(range(lmax + 1)), points, normalize=False, normalization="integral"
    )  # [G, K]
    return to_grid, weights[:, None] * to_grid


#: polar rules of the fine (node-update and readout) grids
QUADRATURES = {"equiangular": s2_grid_matrices, "gauss_legendre": gauss_legendre_matrices}


def check_quadrature(quadrature: str) -> str:
    """``quadrature`` if it names a rule of :data:`QUADRATURES`; else a ValueError naming
    the config key ``grid_quadrature``."""
    if quadrature not in QUADRATURES:
        raise ValueError(
            f"grid_quadrature must be one of {', '.join(map(repr, QUADRATURES))}, "
            f"got {quadrature!r}"
        )
    return quadrature


def quadrature_matrices(
    quadrature: str, lmax: int, res_beta: int, res_alpha: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_grid, from_grid [G, K]`` of the grid named ``quadrature`` (:data:`QUADRATURES`:
    e3nn's equiangular grid, or Gauss-Legendre with half the polar points)."""
    return QUADRATURES[check_quadrature(quadrature)](lmax, res_beta, res_alpha)


def quadrature_points(
    quadrature: str, res_beta: int, res_alpha: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[G, 3]`` and weights ``[G]`` (sum 4 pi) of the grid named ``quadrature``,
    in the order of :func:`quadrature_matrices`'s rows."""
    if check_quadrature(quadrature) == "gauss_legendre":
        return gauss_legendre_points(res_beta, res_alpha)
    with constants():
        points = ToS2Grid(0, (res_beta, res_alpha), dtype=torch.float64).grid.reshape(-1, 3)
    # l = 0 column of from_grid: w_g Y_0 with Y_0 = 1 / sqrt(4 pi)
    weights = s2_grid_matrices(0, res_beta, res_alpha)[1][:, 0] * math.sqrt(4 * math.pi)
    return points, weights


def is_int(value: object) -> bool:
    """An integer that is not a bool (config values: YAML ``true`` is not a grid size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))

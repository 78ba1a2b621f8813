"""Layout-aware maps between coefficients and values on points of the sphere.

Three uses in eSCN, each a precomputed matrix (buffer), never rebuilt per call:

* :class:`EdgeGridActivation`: point-wise activation of edge-frame messages, applied
  directly in the m-major truncated layout. Resolution i uses its own (lmax_i, mmax_i) grid;
  the grids of all resolutions are stacked, so one matmul each way serves all of them::

      y = from_grid^T act(to_grid x),   x, y: [E, K_M, C],  to/from_grid: [G, K_M]

* :class:`SphereSampler`: values of every resolution's coefficients at P points, channels of
  the resolutions side by side: ``x [N, K, C] -> [N, P, R*C]`` (the node-update grid and the
  output heads' sphere points). With ``from_matrix`` it also maps back.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from escn_plugin.so3.grid_silu import grid_silu
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.s2_grid import grid_resolution, quadrature_matrices, s2_grid_matrices

__all__ = [
    "EdgeGridActivation",
    "SphereSampler",
    "node_grid_sampler",
    "resolution_linear",
    "sphere_points_sampler",
]


class EdgeGridActivation(nn.Module):
    """``act`` applied point-wise on the S2 grid to m-major coefficients ``[E, K_M, C]``."""

    def __init__(
        self,
        layout: CoefficientLayout,
        act: nn.Module,
        resolution: int | list[int] | None = None,
    ) -> None:
        super().__init__()
        self.act = act
        coeffs = layout.m_major
        to_blocks, from_blocks = [], []
        for res, (lmax, mmax) in enumerate(zip(layout.lmax_list, layout.mmax_list)):
            to_grid, from_grid = s2_grid_matrices(lmax, *grid_resolution(lmax, mmax, resolution))
            mine = torch.tensor([c.res == res for c in coeffs])  # [K_M]
            lm = layout.lm_index(coeffs).clamp(max=(lmax + 1) ** 2 - 1)
            to_blocks.append(to_grid[:, lm] * mine)  # [G_i, K_M]
            from_blocks.append(from_grid[:, lm] * mine)
        self.register_buffer("to_grid", torch.cat(to_blocks), persistent=False)  # [G, K_M]
        self.register_buffer("from_grid", torch.cat(from_blocks), persistent=False)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x [E, K_M, C]`` -> ``[E, K_M, C]``; with ``rows`` ([R] m-major indices) only
        those output rows, in that order: ``[E, R, C]`` (a free reordering)."""
        from_grid = self.from_grid if rows is None else self.from_grid[:, rows]
        if isinstance(self.act, nn.SiLU) and not torch.compiler.is_compiling():
            # chunked, grid recomputed in the backward (eager; inductor fuses on its own)
            return grid_silu(x, self.to_grid, from_grid)  # [E, R, C]
        grid = torch.matmul(self.to_grid.to(x.dtype), x)  # [E, G, C]
        return torch.matmul(from_grid.to(x.dtype).T, self.act(grid))  # [E, R, C]


class SphereSampler(nn.Module):
    """Coefficients of every resolution at P points, resolutions' channels concatenated.

    Args:
        to_matrix: ``[P, R, K]`` value at point p of resolution r's coefficient k (zero for
            coefficients of other resolutions).
        from_matrix: optional ``[P, R, K]`` quadrature weights for the way back.
    """

    def __init__(self, to_matrix: torch.Tensor, from_matrix: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_resolutions = to_matrix.shape[1]
        self.register_buffer("to_matrix", to_matrix, persistent=False)
        self.register_buffer(
            "from_matrix", from_matrix if from_matrix is not None else None, persistent=False
        )
        #: [(resolution, first, stop)]: each resolution's contiguous coefficients
        used = to_matrix.abs().sum(0) > 0  # [R, K]
        self.blocks: list[tuple[int, int, int]] = []
        for r in range(self.num_resolutions):
            k = torch.nonzero(used[r]).flatten().tolist()
            self.blocks.append((r, k[0], k[-1] + 1))
        # every coefficient belongs to one resolution: the matrices summed over them [P, K]
        self.register_buffer("to_matrix_summed", to_matrix.sum(1), persistent=False)
        self.register_buffer(
            "from_matrix_summed",
            from_matrix.sum(1) if from_matrix is not None else None,
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, K, C] -> [N, P, R*C]``."""
        mat = self.to_matrix.to(x.dtype)
        if self.num_resolutions == 1:
            return torch.matmul(mat[:, 0], x)
        values = torch.einsum("prk,nkc->nprc", mat, x)
        return values.reshape(x.shape[0], mat.shape[0], -1)

    def sample_linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``linear(forward(x))`` computed on the coefficient side: ``x [N, K, C]``,
        ``weight [C_out, R*C]`` -> ``[N, P, C_out]``.

        Sampling acts on the coefficient index and the linear map on channels, so they
        commute: with r(k) the resolution of coefficient k and W_r the columns of
        resolution r, ``sum_k T[p, r(k), k] (W_r(k) x[n, k])`` + bias. K coefficients are
        mapped instead of P points and no [N, P, R*C] tensor is made.
        """
        h = resolution_linear(x, weight.to(x.dtype), self.blocks)  # [N, K, C_out]
        values = torch.matmul(self.to_matrix_summed.to(x.dtype), h)  # [N, P, C_out]
        return values if bias is None else values + bias.to(x.dtype)

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        """``values [N, P, R*C] -> [N, K, C]`` (each resolution reads its own channels)."""
        mat = self.from_matrix.to(values.dtype)
        if self.num_resolutions == 1:
            return torch.matmul(mat[:, 0].T, values)
        num_nodes, num_points, _ = values.shape
        values = values.view(num_nodes, num_points, self.num_resolutions, -1)
        return torch.einsum("prk,nprc->nkc", mat, values)


def resolution_linear(
    x: torch.Tensor, weight: torch.Tensor, blocks: list[tuple[int, int, int]]
) -> torch.Tensor:
    """``x [N, K, C]``, ``weight [C_out, R*C]`` -> ``[N, K, C_out]``: each coefficient k
    mapped by the columns of its own resolution, ``W[:, r(k) C : (r(k)+1) C] x[n, k]``
    (``blocks``: :attr:`SphereSampler.blocks`). This is a linear map over the R*C channels
    of sampled values, applied on the coefficient side."""
    if len(blocks) == 1:
        return x @ weight.T
    c = x.shape[-1]
    return torch.cat([x[:, a:b] @ weight[:, r * c : (r + 1) * c].T for r, a, b in blocks], dim=1)


def _per_resolution(layout: CoefficientLayout, block: torch.Tensor) -> torch.Tensor:
    """Spread a single-block matrix ``[P, (lmax+1)^2]`` over the full layout: [P, R, K]."""
    out = block.new_zeros(block.shape[0], layout.num_resolutions, layout.num_full)
    for res, lmax in enumerate(layout.lmax_list):
        out[:, res, layout.res_slice(res)] = block[:, : (lmax + 1) ** 2]
    return out


def node_grid_sampler(
    layout: CoefficientLayout,
    resolution: int | list[int] | None = None,
    quadrature: str = "equiangular",
) -> SphereSampler:
    """The node-update grid: every resolution on the (lmax, lmax) grid of the largest lmax
    (``quadrature``: see :func:`~escn_plugin.so3.s2_grid.quadrature_matrices`)."""
    lmax = layout.lmax
    res = grid_resolution(lmax, lmax, resolution, name="node_resolution")
    to_grid, from_grid = quadrature_matrices(quadrature, lmax, *res)
    return SphereSampler(_per_resolution(layout, to_grid), _per_resolution(layout, from_grid))


def sphere_points_sampler(layout: CoefficientLayout, points: torch.Tensor) -> SphereSampler:
    """Values at given unit vectors ``points [P, 3]`` (e3nn 'integral' normalisation)."""
    sh = o3.spherical_harmonics(list(range(layout.lmax + 1)), points.double(), normalize=False)
    return SphereSampler(_per_resolution(layout, sh))

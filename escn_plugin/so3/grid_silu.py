"""SiLU on the S2 grid, edge chunk by edge chunk, recomputing the grid in the backward.

    y_e = F^T SiLU(T x_e)          x [E, K_M, C] -> y [E, R, C],  T [G, K_M], F [G, R]

The grid values ``[E, G, C]`` (G ~ 2.4 K_M: 70 x 29 at L6-M2) are the largest tensor of a
message pass. Plain autograd allocates them twice in the forward (grid, SiLU) and twice in
the backward, and keeps one copy per layer for the backward. Here they exist only one chunk
of edges at a time (small enough to stay in cache), nothing but ``x`` is saved, and the
backward recomputes each chunk's grid. The backward is made of differentiable tensor
operations, so double backward (gradient forces trained through -dE/dpos) works.
"""

from __future__ import annotations

import torch

__all__ = ["grid_silu"]

EDGE_CHUNK = 64


class _GridSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, to_grid, from_grid):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, to_grid, from_grid)
        num_edges, _, channels = x.shape
        out = x.new_empty(num_edges, from_grid.shape[1], channels)  # [E, R, C]
        for start in range(0, num_edges, EDGE_CHUNK):
            grid = torch.matmul(to_grid, x[start : start + EDGE_CHUNK])  # [B, G, C]
            values = torch.matmul(from_grid.T, torch.nn.functional.silu(grid))  # [B, R, C]
            out[start : start + EDGE_CHUNK] = values
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, to_grid, from_grid = ctx.saved_tensors
        pieces = []
        for start in range(0, x.shape[0], EDGE_CHUNK):
            grid = torch.matmul(to_grid, x[start : start + EDGE_CHUNK])  # [B, G, C], recomputed
            sigmoid = torch.sigmoid(grid)
            d_act = torch.matmul(from_grid, grad[start : start + EDGE_CHUNK])  # [B, G, C]
            d_grid = d_act * (sigmoid * (1 + grid * (1 - sigmoid)))  # SiLU'(g)
            pieces.append(torch.matmul(to_grid.T, d_grid))  # [B, K_M, C]
        return torch.cat(pieces), None, None


def grid_silu(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """``x [E, K_M, C]``, ``to_grid [G, K_M]``, ``from_grid [G, R]`` -> ``[E, R, C]``:
    ``from_grid^T SiLU(to_grid x_e)`` per edge (the constants get no gradient)."""
    return _GridSiLU.apply(x, to_grid.to(x.dtype), from_grid.to(x.dtype))

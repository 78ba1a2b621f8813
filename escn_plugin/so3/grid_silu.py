"""SiLU on the S2 grid, edge chunk by edge chunk, recomputing the grid in the backward.

    y_e = SiLU(x_e^T T^T) F        x [E, K_M, C] -> y [E, C, R],  T [G, K_M], F [G, R]

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


def _grid(x: torch.Tensor, to_grid: torch.Tensor) -> torch.Tensor:
    """``x [B, K_M, C]`` -> grid values ``[B C, G]`` (channels-major rows)."""
    return torch.matmul(x.transpose(1, 2).reshape(-1, x.shape[1]), to_grid.T)


class _GridSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, to_grid, from_grid):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, to_grid, from_grid)
        num_edges, _, channels = x.shape
        out = x.new_empty(num_edges, channels, from_grid.shape[1])  # [E, C, R]
        for start in range(0, num_edges, EDGE_CHUNK):
            chunk = x[start : start + EDGE_CHUNK]
            values = torch.nn.functional.silu(_grid(chunk, to_grid)) @ from_grid  # [B C, R]
            out[start : start + EDGE_CHUNK] = values.view(chunk.shape[0], channels, -1)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, to_grid, from_grid = ctx.saved_tensors
        channels = x.shape[2]
        pieces = []
        for start in range(0, x.shape[0], EDGE_CHUNK):
            chunk = x[start : start + EDGE_CHUNK]
            grid = _grid(chunk, to_grid)  # [B C, G], recomputed
            sigmoid = torch.sigmoid(grid)
            d_act = grad[start : start + EDGE_CHUNK].reshape(-1, from_grid.shape[1]) @ from_grid.T
            d_grid = d_act * (sigmoid * (1 + grid * (1 - sigmoid)))  # SiLU'(g)
            d_x = (d_grid @ to_grid).view(chunk.shape[0], channels, -1)  # [B, C, K_M]
            pieces.append(d_x.transpose(1, 2))
        return torch.cat(pieces), None, None


def grid_silu(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """``x [E, K_M, C]``, ``to_grid [G, K_M]``, ``from_grid [G, R]`` -> ``[E, C, R]``,
    ``SiLU(to_grid x) `` mapped back with ``from_grid``, per edge (constants get no gradient)."""
    return _GridSiLU.apply(x, to_grid.to(x.dtype), from_grid.to(x.dtype))

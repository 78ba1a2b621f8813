"""Node update: a per-point MLP on the S2 grid over [node embedding | aggregated message]."""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.so3.projections import SphereSampler

__all__ = ["NodeUpdate"]


class NodeUpdate(nn.Module):
    """``from_grid(fc3(SiLU(fc2(SiLU(fc1([grid(x) | grid(m)]))))))``, all bias-free.

    Every resolution is sampled on the grid of the largest lmax (``grid``, from
    :func:`~escn_plugin.so3.projections.node_grid_sampler`); the R resolutions' channels sit
    side by side, so the MLP maps 2 R C -> R C.
    """

    def __init__(self, grid: SphereSampler, sphere_channels: int) -> None:
        super().__init__()
        width = grid.num_resolutions * sphere_channels
        self.grid = grid  # constants only: one instance is shared by all layers
        self.fc1 = nn.Linear(2 * width, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.fc3 = nn.Linear(width, width, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """``x, message [N, K, C] -> [N, K, C]``."""
        grid = torch.cat((self.grid(x), self.grid(message)), dim=-1)  # [N, G, 2RC]
        grid = self.fc3(self.act(self.fc2(self.act(self.fc1(grid)))))  # [N, G, RC]
        return self.grid.inverse(grid)

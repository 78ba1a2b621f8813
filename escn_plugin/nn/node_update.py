"""Node update: a per-point MLP on the S2 grid over [node embedding | aggregated message]."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
        """``x, message [N, K, C] -> [N, K, C]``.

        In training the grid values ([N, G, 2RC] and the MLP's activations, ~7x the size of
        x) are recomputed in the backward from x and message instead of being kept.
        """
        if torch.is_grad_enabled() and (x.requires_grad or message.requires_grad):
            return checkpoint(self._update, x, message, use_reentrant=False)
        return self._update(x, message)

    def _update(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        grid = torch.cat((self.grid(x), self.grid(message)), dim=-1)  # [N, G, 2RC]
        grid = self.fc3(self.act(self.fc2(self.act(self.fc1(grid)))))  # [N, G, RC]
        return self.grid.inverse(grid)

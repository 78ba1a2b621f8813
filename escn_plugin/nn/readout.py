"""Readouts from values on sphere points: energy per atom and direct forces.

Both take ``values [N, P, R*C]`` (node embeddings sampled at P points p of the sphere)
and apply the same MLP shape C -> C -> C -> 1 (SiLU) per point, then integrate with the
quadrature weights w_p (sum_p w_p = 1; w_p = 1/P for the reference's Fibonacci points):

    energy_i = sum_p w_p s_p          forces_i = sum_p w_p s_p p
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EnergyReadout", "ForceReadout"]


class _PointMLP(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.fc3 = nn.Linear(channels, 1, bias=False)
        self.act = nn.SiLU()

    def point_scores(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, P, RC] -> [N, P]``."""
        values = values.to(self.fc1.weight.dtype)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(values))))).squeeze(-1)


class EnergyReadout(_PointMLP):
    """Per-atom energy ``[N]``: the sphere average of the point MLP."""

    def forward(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        scores = self.point_scores(values)  # [N, P]
        return scores @ weights.to(scores.dtype)


class ForceReadout(_PointMLP):
    """Per-atom force ``[N, 3]``: the sphere average of the point score times p."""

    def forward(
        self, values: torch.Tensor, points: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        scores = self.point_scores(values)  # [N, P]
        return (scores * weights.to(scores.dtype)) @ points.to(scores.dtype)

"""Readouts from values on sphere points: energy per atom and direct forces.

Both read the node embeddings ``x [N, K, C]`` at P points p of the sphere (a
:class:`~escn_plugin.so3.projections.SphereSampler`, resolutions' channels side by side)
and apply the same MLP shape R*C -> C -> C -> 1 (SiLU) per point, then integrate with the
quadrature weights w_p (sum_p w_p = 1; w_p = 1/P for the reference's Fibonacci points):

    energy_i = sum_p w_p s_p          forces_i = sum_p w_p s_p p

The first linear map is applied to the coefficients before sampling
(:meth:`~escn_plugin.so3.projections.SphereSampler.sample_linear`): the same result with
K instead of P rows.
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.so3.projections import SphereSampler

__all__ = ["EnergyReadout", "ForceReadout"]


class _PointMLP(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.fc3 = nn.Linear(channels, 1, bias=False)
        self.act = nn.SiLU()

    def point_scores(self, x: torch.Tensor, sampler: SphereSampler) -> torch.Tensor:
        """``x [N, K, C]`` -> scores at the sampler's points ``[N, P]``."""
        x = x.to(self.fc1.weight.dtype)
        hidden = sampler.sample_linear(x, self.fc1.weight, self.fc1.bias)  # [N, P, C]
        return self.fc3(self.act(self.fc2(self.act(hidden)))).squeeze(-1)


class EnergyReadout(_PointMLP):
    """Per-atom energy ``[N]``: the sphere average of the point MLP."""

    def forward(
        self, x: torch.Tensor, sampler: SphereSampler, weights: torch.Tensor
    ) -> torch.Tensor:
        scores = self.point_scores(x, sampler)  # [N, P]
        return scores @ weights.to(scores.dtype)


class ForceReadout(_PointMLP):
    """Per-atom force ``[N, 3]``: the sphere average of the point score times p."""

    def forward(
        self,
        x: torch.Tensor,
        sampler: SphereSampler,
        points: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        scores = self.point_scores(x, sampler)  # [N, P]
        return (scores * weights.to(scores.dtype)) @ points.to(scores.dtype)

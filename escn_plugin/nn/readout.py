"""Readouts from values on sphere points: energy per atom and direct forces.

Both read the node embeddings ``x [N, K, C]`` at P points p of the sphere (a
:class:`~escn_plugin.so3.projections.SphereSampler`, resolutions' channels side by side)
and apply the same MLP shape R*C -> C -> C -> 1 (SiLU) per point, then integrate with the
quadrature weights w_p (sum_p w_p = 1; w_p = 1/P for the reference's Fibonacci points):

    energy_i = sum_p w_p s_p          forces_i = sum_p w_p s_p p

The first linear map is applied to the coefficients before sampling
(:meth:`~escn_plugin.so3.projections.SphereSampler.sample_linear`): the same result with
K instead of P rows. The MLP is per atom: ``node_block`` (blocked inference, see
:mod:`escn_plugin.nn.blocked`) runs it on that many atoms at a time, so its ``[n, P, C]``
activations stay the size of one block.
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.nn.blocked import node_blocks
from escn_plugin.so3.projections import SphereSampler

__all__ = ["EnergyReadout", "ForceReadout"]


class _PointMLP(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.fc3 = nn.Linear(channels, 1, bias=False)
        self.act = nn.SiLU()

    def point_scores(
        self, x: torch.Tensor, sampler: SphereSampler, node_block: int | None = None
    ) -> torch.Tensor:
        """``x [N, K, C]`` -> scores at the sampler's points ``[N, P]``, ``node_block``
        atoms at a time (all at once: None)."""
        x = x.to(self.fc1.weight.dtype)
        blocks = node_blocks(x.shape[0], node_block)
        if len(blocks) == 1:
            return self._scores(x, sampler)
        return torch.cat([self._scores(x[b], sampler) for b in blocks])

    def _scores(self, x: torch.Tensor, sampler: SphereSampler) -> torch.Tensor:
        hidden = sampler.sample_linear(x, self.fc1.weight, self.fc1.bias)  # [n, P, C]
        return self.fc3(self.act(self.fc2(self.act(hidden)))).squeeze(-1)  # [n, P]


class EnergyReadout(_PointMLP):
    """Per-atom energy ``[N]``: the sphere average of the point MLP."""

    def forward(
        self,
        x: torch.Tensor,
        sampler: SphereSampler,
        weights: torch.Tensor,
        node_block: int | None = None,
    ) -> torch.Tensor:
        scores = self.point_scores(x, sampler, node_block)  # [N, P]
        return scores @ weights.to(scores.dtype)


class ForceReadout(_PointMLP):
    """Per-atom force ``[N, 3]``: the sphere average of the point score times p."""

    def forward(
        self,
        x: torch.Tensor,
        sampler: SphereSampler,
        points: torch.Tensor,
        weights: torch.Tensor,
        node_block: int | None = None,
    ) -> torch.Tensor:
        scores = self.point_scores(x, sampler, node_block)  # [N, P]
        return (scores * weights.to(scores.dtype)) @ points.to(scores.dtype)

"""Message block: rotate into edge frames, SO(2)-convolve, activate on S2, rotate back, sum.

Per edge e = (s -> t) with edge-frame matrix W_e [K_M, K] (see
:mod:`escn_plugin.so3.rotation`)::

    x_s, x_t      = W_e x[s], W_e x[t]                      # [K_M, C] each, one bmm for both
    y             = SO2_source(x_s, f_e) + SO2_target(x_t, f_e)
    y             = SiLU on the edge-frame S2 grid (y)
    message[t]   += W_e^T y                                  # [K, C]
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.backends import SO2_IMPLEMENTATIONS
from escn_plugin.nn.edge_features import EdgeFeatures
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.projections import EdgeGridActivation

__all__ = ["MessageBlock"]


class MessageBlock(nn.Module):
    """One round of eSCN messages, summed into the target nodes (no normalisation).

    ``grid_act`` is the point-wise SiLU on the edge-frame S2 grid (shared, no weights).
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        sphere_channels: int,
        hidden_channels: int,
        edge_channels: int,
        num_basis: int,
        max_num_elements: int,
        grid_act: EdgeGridActivation,
        so2_impl: str = "escn",
    ) -> None:
        super().__init__()
        self.sphere_channels = sphere_channels
        self.edge_features = EdgeFeatures(num_basis, edge_channels, max_num_elements)
        so2_args = (layout, sphere_channels, hidden_channels, edge_channels)
        self.so2_source = SO2_IMPLEMENTATIONS.build(so2_impl, *so2_args)
        self.so2_target = SO2_IMPLEMENTATIONS.build(so2_impl, *so2_args)
        self.grid_act = grid_act  # constants only: one instance is shared by all layers

    def forward(
        self,
        x: torch.Tensor,
        basis: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        wigner: torch.Tensor,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [N, K, C]``, ``basis [E, B]``, ``edge_index [2, E]`` (source, target),
        ``wigner [E, K_M, K]``, optional ``edge_weight [E]`` scaling each message ->
        aggregated messages ``[N, K, C]``."""
        source, target = edge_index
        x_edge = self.edge_features(basis, atomic_numbers[source], atomic_numbers[target])
        pair = torch.cat((x[source], x[target]), dim=-1)  # [E, K, 2C]
        pair = torch.bmm(wigner, pair)  # [E, K_M, 2C] in the edge frame
        x_source, x_target = pair.chunk(2, dim=-1)
        y = self.so2_source(x_source, x_edge) + self.so2_target(x_target, x_edge)
        y = self.grid_act(y)  # [E, K_M, C]
        y = torch.bmm(wigner.transpose(1, 2), y)  # [E, K, C] back in the global frame
        if edge_weight is not None:
            y = y * edge_weight.view(-1, 1, 1).to(y.dtype)
        out = torch.zeros(x.shape[0], *y.shape[1:], dtype=y.dtype, device=y.device)
        return out.index_add_(0, target, y)

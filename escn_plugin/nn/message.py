"""Message block: into edge frames, SO(2)-convolve, activate on S2, rotate back, sum.

Per edge e = (s -> t) with edge-frame rotation W_e [K_M, K] (block-sparse, see
:mod:`escn_plugin.so3.rotation`)::

    y           = SO2_source(W_e x[s], f_e) + SO2_target(W_e x[t], f_e)   # [K_M, C]
    y           = SiLU on the edge-frame S2 grid (y)
    message[t] += w_e W_e^T y                                            # [K, C]

The SO(2) blocks read node coefficients and the rotation rows directly (the default
``factored`` block applies its input maps per node, before rotating). Rotating back and
summing over a node's edges is one ``bmm`` per degree over nodes, edges in per-target
slots (:mod:`escn_plugin.common.edge_groups`): no [E, K, C] tensor, no scatter.
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.common.edge_groups import MessageEdges
from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from escn_plugin.nn.edge_features import EdgeFeatures
from escn_plugin.so2.so2_conv import source_target_messages
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.projections import EdgeGridActivation
from escn_plugin.so3.rotation import RotateBackSum

__all__ = ["MessageBlock"]


class MessageBlock(nn.Module):
    """One round of eSCN messages, summed into the target nodes (no normalisation).

    ``grid_act`` is the point-wise SiLU on the edge-frame S2 grid (shared, no weights).
    ``scalar_input``: x is non-zero on l = 0 only (the first layer); lets the SO(2) blocks
    skip the orders m > 0, whose inputs are then exactly zero.
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
        so2_impl: str = "factored",
        scalar_input: bool = False,
    ) -> None:
        super().__init__()
        self.sphere_channels = sphere_channels
        self.scalar_input = scalar_input
        self.edge_features = EdgeFeatures(num_basis, edge_channels, max_num_elements)
        so2_args = (layout, sphere_channels, hidden_channels, edge_channels)
        self.so2_source = SO2_IMPLEMENTATIONS.build(so2_impl, *so2_args)
        self.so2_target = SO2_IMPLEMENTATIONS.build(so2_impl, *so2_args)
        self.grid_act = grid_act  # constants only: one instance is shared by all layers
        self.rotate_back = RotateBackSum(layout)

    def forward(
        self,
        x: torch.Tensor,
        basis: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edges: MessageEdges,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [N', K, C]``, ``basis [E, B]``, ``edge_index [2, E]`` (source, target:
        the atoms of ``atomic_numbers``), ``edges`` (rotation rows and the edges grouped by
        node of x, :func:`~escn_plugin.common.edge_groups.message_edges`), ``edge_weight
        [E]`` (optional factor on each edge's message) -> messages summed into the
        targets, ``[N, K, C]``. The targets are the first N rows of x (N = the rows of
        ``edges.target.slots``): all of x for a whole graph, a block's targets in blocked
        inference (the other rows are the block's other sources)."""
        num_targets = edges.target.slots.shape[0]
        if edge_index.shape[1] == 0:  # no edges: no messages
            return x.new_zeros(num_targets, *x.shape[1:])
        source, target = edge_index
        x_edge = self.edge_features(basis, atomic_numbers[source], atomic_numbers[target])
        wigner, scalar = edges.wigner, self.scalar_input
        y = source_target_messages(
            self.so2_source,
            self.so2_target,
            x,
            wigner,
            edges.source,
            edges.target,
            x_edge,
            scalar,
            x_target=x[:num_targets],
        )  # [E, K_M, C]: source block + target block
        # [E, K_M, C], rows grouped per degree; the [E, G, C] grid values are recomputed
        # in the backward (escn_plugin.so3.grid_silu), not kept
        y = self.grid_act(y, self.rotate_back.rows)
        if edge_weight is not None:
            y = y * edge_weight.view(-1, 1, 1).to(y.dtype)
        return self.rotate_back(wigner, y, edges.target)

"""One eSCN interaction layer: message block, then the grid node update."""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.common.edge_groups import MessageEdges
from escn_plugin.nn.message import MessageBlock
from escn_plugin.nn.node_update import NodeUpdate

__all__ = ["InteractionLayer"]


class InteractionLayer(nn.Module):
    """``x [N', K, C] -> update [N, K, C]`` (the model adds the residual).

    The targets of ``edges`` are the first N rows of x (N = ``edges.target.slots``' rows):
    all of them for the whole graph (N' = N), or a block's targets followed by the other
    sources of its edges in blocked inference (:mod:`escn_plugin.nn.blocked`).
    """

    def __init__(self, message: MessageBlock, node_update: NodeUpdate) -> None:
        super().__init__()
        self.message = message
        self.node_update = node_update

    def forward(
        self,
        x: torch.Tensor,
        basis: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edges: MessageEdges,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        message = self.message(x, basis, atomic_numbers, edge_index, edges, edge_weight)
        return self.node_update(x[: message.shape[0]], message)  # [N, K, C]

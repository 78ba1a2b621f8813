"""Invariant edge features from the distance basis and the two atoms' elements."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EdgeFeatures"]


class EdgeFeatures(nn.Module):
    """``SiLU(out_proj(SiLU(distance_proj(basis) + source_emb(Z_s) + target_emb(Z_t))))``.

    Args:
        num_basis: size of the distance expansion.
        edge_channels: width of the edge features.
        max_num_elements: size of the element embeddings.
    """

    def __init__(self, num_basis: int, edge_channels: int, max_num_elements: int) -> None:
        super().__init__()
        self.distance_proj = nn.Linear(num_basis, edge_channels)
        self.source_embedding = nn.Embedding(max_num_elements, edge_channels)
        self.target_embedding = nn.Embedding(max_num_elements, edge_channels)
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)
        self.out_proj = nn.Linear(edge_channels, edge_channels)
        self.act = nn.SiLU()

    def forward(
        self, basis: torch.Tensor, z_source: torch.Tensor, z_target: torch.Tensor
    ) -> torch.Tensor:
        """``basis [E, B]``, element indices ``[E]`` -> ``[E, edge_channels]``."""
        x = self.distance_proj(basis) + self.source_embedding(z_source)
        x = self.act(x + self.target_embedding(z_target))
        return self.act(self.out_proj(x))

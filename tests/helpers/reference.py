"""What the tests against fairchem's reference eSCN share: a small config, our edge frame
patched into the reference (it draws a random roll), spread-out weights."""

from __future__ import annotations

import torch

from escn_plugin.so3 import edge_frame

SMALL = dict(
    num_layers=3,
    sphere_channels=8,
    hidden_channels=12,
    edge_channels=10,
    num_sphere_samples=32,
    cutoff=6.0,
    max_neighbors=20,
    otf_graph=False,
    use_pbc=True,
    basis_width_scalar=2.0,
)


def _ours_frame(self, data, edge_index, edge_distance_vec):
    return edge_frame(edge_distance_vec).detach()


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Spread the weights (the reference's edge embeddings start near zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)

"""Message block: into edge frames, SO(2)-convolve, activate on S2, rotate back, sum.

Per edge e = (s -> t) with edge-frame rotation W_e [K_M, K] (block-sparse, see
:mod:`escn_plugin.so3.rotation`)::

    y           = SO2_source(W_e x[s], f_e) + SO2_target(W_e x[t], f_e)   # [K_M, C]
    y           = SiLU on the edge-frame S2 grid (y)
    message[t] += w_e W_e^T y                                            # [K, C]

The SO(2) blocks read node coefficients and the rotation rows directly (the default
``factored`` block applies its input maps per node, before rotating). Rotating back and
summing over a node's edges is one ``bmm`` per degree over nodes, edges in per-target
slots (:mod:`escn_plugin.nn.edge_groups`): no [E, K, C] tensor, no scatter.
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.backends import SO2_IMPLEMENTATIONS
from escn_plugin.nn.edge_features import EdgeFeatures
from escn_plugin.nn.edge_groups import MessageEdges, NodeGroups, pad
from escn_plugin.so3.layout import CoefficientLayout, WignerBlockLayout
from escn_plugin.so3.projections import EdgeGridActivation

__all__ = ["MessageBlock", "RotateBackSum"]


class _TransposedBmm(torch.autograd.Function):
    """``bmm(d^T, y)`` that keeps y for the backward only when d needs a gradient.

    torch's bmm always saves both operands; here y ([N, W r_l, C], the messages) is only
    needed for d's gradient (the rotation rows require grad only when forces are taken
    as -dE/dpos). The backward is made of bmm, so it is differentiable again.
    """

    @staticmethod
    def forward(ctx, d, y):  # noqa: ANN001, ANN205
        # autocast does not reach inside a Function: compute in the wider of the two dtypes
        dtype = torch.promote_types(d.dtype, y.dtype)
        d, y = d.to(dtype), y.to(dtype)
        ctx.save_for_backward(d, y if ctx.needs_input_grad[0] else None)
        return torch.bmm(d.transpose(1, 2), y)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        d, y = ctx.saved_tensors
        grad = grad.to(d.dtype)
        grad_d = torch.bmm(y, grad.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_y = torch.bmm(d, grad) if ctx.needs_input_grad[1] else None
        return grad_d, grad_y


class RotateBackSum(nn.Module):
    """``message[n] = sum over the edges e of node n of W_e^T y_e``, degree by degree.

    ``y [E, K_M, C]`` must hold its rows in :attr:`rows` order (the m-major rows regrouped
    per (res, l) block); each block D^l[rows_l, :] of W acts on its own rows:
    ``message_l[n] = sum_e D^l_e[rows_l]^T y_e[rows_l]``, a bmm over nodes of
    [2l+1, W r_l] x [W r_l, C]. Non-zero entries only (235 of 1421 at L6-M2).
    """

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__()
        blocks = WignerBlockLayout(layout).degree_blocks
        rows = [r for _, _, block_rows, _ in blocks for r in block_rows]
        entries = [i for _, _, _, block_entries in blocks for i in block_entries]
        self.block_shapes = [(len(block_rows), 2 * l + 1) for _, l, block_rows, _ in blocks]
        self.register_buffer("rows", torch.tensor(rows), persistent=False)  # [K_M]
        self.register_buffer("entries", torch.tensor(entries), persistent=False)  # [nnz]

    def forward(self, wigner: torch.Tensor, y: torch.Tensor, groups: NodeGroups) -> torch.Tensor:
        """``wigner [E, nnz]``, ``y [E, K_M, C]`` (rows in :attr:`rows` order) -> ``[N, K, C]``."""
        num_nodes, width = groups.slots.shape
        channels = y.shape[-1]
        wigner = pad(wigner.index_select(1, self.entries), groups)  # [N*W, nnz] per block
        y = pad(y, groups).view(num_nodes, width, -1, channels)  # [N, W, K_M, C]
        # split (not slicing): its backward is one cat, a slice's zero-fills the whole input
        d_blocks = wigner.split([rows * cols for rows, cols in self.block_shapes], dim=1)
        y_blocks = y.split([rows for rows, _ in self.block_shapes], dim=2)
        out = []
        for (num_rows, num_cols), d, y_l in zip(self.block_shapes, d_blocks, y_blocks):
            d = d.reshape(num_nodes, width * num_rows, num_cols)  # [N, W r_l, 2l+1]
            y_l = y_l.reshape(num_nodes, width * num_rows, channels)  # [N, W r_l, C]
            out.append(_TransposedBmm.apply(d, y_l))  # [N, 2l+1, C]
        return torch.cat(out, dim=1)  # [N, K, C], full l-major layout


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
        """``x [N, K, C]``, ``basis [E, B]``, ``edge_index [2, E]`` (source, target),
        ``edges`` (rotation rows and node groups, :func:`~escn_plugin.nn.edge_groups.
        message_edges`), ``edge_weight [E]`` (optional factor on each edge's message)
        -> aggregated messages ``[N, K, C]``."""
        if edge_index.shape[1] == 0:  # no edges in the whole batch: no messages
            return torch.zeros_like(x)
        source, target = edge_index
        x_edge = self.edge_features(basis, atomic_numbers[source], atomic_numbers[target])
        wigner, scalar = edges.wigner, self.scalar_input
        y = self.so2_source.pair_from_nodes(
            self.so2_target, x, wigner, edges.source, edges.target, x_edge, scalar
        )  # [E, K_M, C]: source block + target block
        # [E, K_M, C], rows grouped per degree; the [E, G, C] grid values are recomputed
        # in the backward (escn_plugin.so3.grid_silu), not kept
        y = self.grid_act(y, self.rotate_back.rows)
        if edge_weight is not None:
            y = y * edge_weight.view(-1, 1, 1).to(y.dtype)
        return self.rotate_back(wigner, y, edges.target)

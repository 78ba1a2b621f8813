"""Edges grouped by node, so that per-edge products with per-node data are batched matmuls.

Messages need, for every edge e, products of a small per-edge matrix with data of one of
its nodes (the factored SO(2) input maps) and sums over the edges of a node (rotating back
and aggregating). Both become one ``bmm`` over nodes once the edges are laid out in
per-node slots::

    slots [N, W]: the edges of node n in slots n*W .. n*W + count(n) - 1, padding after
    pad(t [E, ...])     -> [N*W, ...]   (zeros in empty slots; a gather: its backward keeps
                                         only the index, index_copy's would keep t)
    unpad(t [N*W, ...]) -> [E, ...]     (a gather; backward: a scatter of disjoint rows)

W is the largest number of edges of one node (about ``max_neighbors``): the padding
costs (N W - E) rows. The grouping depends only on the graph: it is built once per
forward pass (:func:`message_edges`, outside the compiled layers, since W is data
dependent) and shared by every layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MessageEdges", "NodeGroups", "group_by_node", "message_edges", "pad", "unpad"]


class NodeGroups(NamedTuple):
    """Edges grouped by one of their end nodes."""

    index: torch.Tensor  # [E] the node of each edge (source or target)
    slot: torch.Tensor  # [E] flat slot n * W + position of each edge
    slots: torch.Tensor  # [N, W] the edge in each slot, E for an empty slot


class MessageEdges(NamedTuple):
    """Everything per edge that every layer's message block reads."""

    wigner: torch.Tensor  # [E, nnz] block-sparse rotation rows (WignerBlockLayout order)
    source: NodeGroups
    target: NodeGroups


def group_by_node(index: torch.Tensor, num_nodes: int) -> NodeGroups:
    """Slots of the edges of ``index [E]`` grouped by node, in edge order within a node."""
    counts = torch.bincount(index, minlength=num_nodes)
    width = int(counts.max()) if index.numel() > 0 else 0
    order = torch.argsort(index, stable=True)
    starts = torch.cumsum(counts, 0) - counts  # [N] first sorted position of each node
    sorted_index = index[order]
    position = torch.arange(index.shape[0], device=index.device) - starts[sorted_index]
    slot = torch.empty_like(order)
    slot[order] = sorted_index * width + position
    slots = torch.full((num_nodes * width,), index.shape[0], device=index.device)
    slots[slot] = torch.arange(index.shape[0], device=index.device)
    return NodeGroups(index, slot, slots.view(num_nodes, width))


def message_edges(wigner: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> MessageEdges:
    """Bundle the rotation rows with the edges grouped by source and by target node."""
    source, target = edge_index
    return MessageEdges(wigner, group_by_node(source, num_nodes), group_by_node(target, num_nodes))


def pad(t: torch.Tensor, groups: NodeGroups) -> torch.Tensor:
    """``[E, ...] -> [N*W, ...]``: each edge's row in its slot, zeros elsewhere."""
    padded = torch.cat((t, t.new_zeros(1, *t.shape[1:])))  # row E: the zero padding
    return padded.index_select(0, groups.slots.flatten())


def unpad(t: torch.Tensor, groups: NodeGroups) -> torch.Tensor:
    """``[N*W, ...] -> [E, ...]``: the row of each edge's slot."""
    return t.index_select(0, groups.slot)

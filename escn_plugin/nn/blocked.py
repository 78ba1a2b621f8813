"""Inference in blocks of target atoms: memory per atom that does not grow with the system.

Without gradients (validate, predict, relaxations and MD with direct forces) nothing a
layer computes has to outlive the layer, so each layer runs block by block over runs of
consecutive target atoms, end to end, and no per-edge tensor is larger than one block.
Edges are target-major (the neighbour list's order; a precomputed graph is sorted first if
it is not), so the targets ``[a, b)`` of a block own one contiguous edge range ``[e_a, e_b)``.
Per layer and block (shapes: n = b - a targets, n' local nodes, e = e_b - e_a edges)::

    nodes       = [a, ..., b - 1, the other sources of the block's edges]    # [n'] local graph
    W, f, w     = edge_tensors(e_a..e_b)           # rotation rows [e, nnz], distance basis
                                                    # [e, B], envelope [e]: recomputed here
    update      = layer(x[nodes], f, Z, edges, W, w)  # messages + node update: [n, K, C]
    x_next[a:b] = update                 (first layer)
    x_next[a:b] = x[a:b] + update        (the others)

Only ``x`` and ``x_next`` ([N, K, C] each, two buffers taking turns; the embedding's is
reused) grow with the system, beside the graph itself
(edge index, vectors, distances: ~60 bytes per edge) and the plan (local indices and
per-node edge slots: ~70 bytes per edge). The readout heads read ``x`` in node blocks too
(``node_block``, passed to them in the backbone's outputs). The result is that of the
unblocked path up to float round-off (matrix products over other row counts).

Block size. :class:`InferenceMemory` estimates, from the layout and widths, the bytes one
edge of a block holds at the peak of a message pass (rotation rows and their construction,
distance basis, edge features, both SO(2) blocks' hidden features, their padded per-node
slots, the messages, the rotate-back sum), the bytes per target atom (the node update on
its grid) and the bytes every atom holds throughout (x, x_next, the graph and the plan).
:func:`block_edges` then picks the block's edge count::

    edges = max(FRACTION * persistent / per_edge,      # block <= half of what is kept anyway
                MIN_BLOCK_FLOPS[device] / flops_per_edge)   # enough work per block
    edges = min(edges, FREE_FRACTION * free memory / per_edge)

so that the peak is at most ~1.5x the persistent memory (flat per atom) wherever a block
holds enough work for the per-block overhead to stay a few percent (CPU: 2 GFLOP, ~50 ms;
GPU: 100 GFLOP), and never more than half the free memory. ``inference_block_edges`` (the
model argument) overrides it.

Host-device synchronisation: the plan (edge ranges, local graphs, slot widths) is built
once per forward pass, before the layers (a target-order check, one ``.cpu()`` of the
per-node edge counts, and per block a ``unique`` and two slot widths); the block loop itself
has none (tests/model/test_device_placement.py runs it under FakeTensorMode, which refuses
data-dependent operations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from escn_plugin.common.edge_groups import MessageEdges, NodeGroups, group_by_node
from escn_plugin.nn.layer import InteractionLayer
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.rotation import WignerBlockLayout

__all__ = [
    "BlockPlan",
    "InferenceMemory",
    "TargetBlock",
    "block_edges",
    "free_memory_bytes",
    "node_blocks",
    "plan_blocks",
    "run_blocked_layers",
    "target_major_order",
]

#: the block's peak at most this fraction of the memory the atoms hold throughout
FRACTION = 0.5
#: work (forward FLOPs of one layer) a block holds at least, per device type
MIN_BLOCK_FLOPS = {"cpu": 2e9, "cuda": 1e11}
#: a block never takes more than this fraction of the free memory
FREE_FRACTION = 0.5
#: padded per-node slots per edge assumed by the estimate (edges of a node's slot row
#: over the widest row: measured 1.0-1.6 for bulk and slab blocks)
SLOT_PADDING = 1.6
#: local nodes per target assumed by the estimate (the targets and the sources outside
#: the block; measured 1.1-2 for blocks of more than ~20 atoms)
LOCAL_NODES = 2.0
#: edges per chunk of the edge-grid activation (escn_plugin.so3.grid_silu.EDGE_CHUNK)
_EDGE_CHUNK = 64


@dataclass(frozen=True)
class InferenceMemory:
    """Estimated memory and work of blocked inference, in numbers (multiply by the
    element size) unless named otherwise.

    ``per_edge``: what one edge of a block holds at the peak of a message pass;
    ``per_target``: one target atom's node update (and its share of the local node
    features); ``per_block``: a block's fixed part (one edge-grid chunk); ``per_atom``:
    what each atom holds throughout (x and x_next); ``per_head_atom``: one atom of a
    readout block; ``graph_bytes_per_edge``: the graph and the plan (bytes);
    ``flops_per_edge``: forward FLOPs of one edge in one layer, node work included.
    """

    per_edge: float
    per_target: float
    per_block: float
    per_atom: float
    per_head_atom: float
    graph_bytes_per_edge: float
    flops_per_edge: float

    @classmethod
    def from_sizes(
        cls,
        layout: CoefficientLayout,
        sphere_channels: int,
        hidden_channels: int,
        edge_channels: int,
        num_basis: int,
        edge_grid_points: int,
        node_grid_points: int,
        readout_points: int,
        wigner_rows: int,
        wigner_points: int,
        mean_degree: float = 20.0,
    ) -> InferenceMemory:
        """The estimate for a model of these sizes (C = ``sphere_channels``, H =
        ``hidden_channels``; grids: the edge grid's and the node grid's points, the
        readout's points; the Wigner construction's J rows at N sampling points).
        ``mean_degree`` (edges per target) spreads the per-node work over the edges.

        Per edge (numbers), with M the largest order, n_m degrees and c_m columns of
        order m (sum_m c_m over both signs is nnz), F_m = n_m C, S = ``SLOT_PADDING``::

            kept       nnz + B + 1                    rotation rows, basis, envelope
            rotation   3 J N + 2 J (2L+1) + 18        (only while the rows are built)
            messages   3 E_c + 2 H (1 + 4M)           edge features, both blocks' hidden
                       + max(S (2 nnz + 4H),          padded rows and slots of one order
                             20 H + 2 K_M C)          gated outputs, the messages
            back       2 K_M C + nnz + 2 S (nnz + K_M C)   padded rows and messages

        and per target the node update on its grid (G_n points, R C channels) plus, per
        local node (``LOCAL_NODES`` per target), x[nodes] and two orders' z_m [c_m, H'_m].
        Measured against the live-tensor peak of one block (torch.profiler): 1.0-1.8x
        the measured peak at L6-M2 (blocks of 500-4000 edges), 1.5x for the demo model.
        """
        c, h, e_c = sphere_channels, hidden_channels, edge_channels
        blocks = WignerBlockLayout(layout)
        nnz, k_m, k = blocks.nnz, layout.num_m_major, layout.num_full
        mmax, lmax = layout.mmax, layout.lmax
        resolutions = layout.num_resolutions
        kept = nnz + num_basis + 1
        rotation = 3 * wigner_rows * wigner_points + 2 * wigner_rows * (2 * lmax + 1) + 18
        hidden = 3 * e_c + 2 * h * (1 + 4 * mmax)
        orders = max(SLOT_PADDING * (2 * nnz + 4 * h), 20 * h + 2 * k_m * c)
        back = 2 * k_m * c + nnz + 2 * SLOT_PADDING * (nnz + k_m * c)
        per_edge = kept + max(rotation, hidden + orders, e_c + back)
        width = resolutions * c
        # node update: x, message, h [K, RC], two [G, RC] grid tensors, back, output;
        # per local node (LOCAL_NODES per target): x[nodes] and the factored input maps
        # z_m [c_m, H'_m] of two orders at a time
        per_target = 4 * k * c + 2 * k * width + 2 * node_grid_points * width
        z = max(len(blocks.group(m)[2]) * (h if m == 0 else 2 * h) for m in range(mmax + 1))
        per_target += LOCAL_NODES * (k * c + 2 * z)
        per_block = 2 * _EDGE_CHUNK * edge_grid_points * c
        per_head_atom = k * c + 3 * readout_points * c + readout_points
        graph_bytes = 16 + 10 * 4 + 8 * (4 + 2 * SLOT_PADDING)  # index, geometry, plan
        # forward FLOPs per edge: edge features and gates, the factored rotations of both
        # blocks, the fused output maps, the edge grid, rotating back; per node (divided
        # by the mean degree): both blocks' input maps and the node update
        flops = 2 * (num_basis * e_c + e_c * e_c) + 4 * e_c * h * (1 + 2 * mmax)
        per_node = 0.0
        for m in range(mmax + 1):
            _, rows, columns, _ = blocks.group(m)
            h_m = h if m == 0 else 2 * h
            flops += 2 * 2 * rows * len(columns) * h_m  # both blocks
            flops += 2 * rows * (2 * h if m == 0 else 4 * h) * layout.m_size[m] * c
            per_node += 2 * 2 * len(columns) * c * h_m
        flops += 4 * edge_grid_points * k_m * c + 2 * nnz * c
        per_node += 2 * k * 2 * width * width + 4 * node_grid_points * k * width
        per_node += 2 * node_grid_points * width * width
        flops += per_node / max(mean_degree, 1.0)
        return cls(
            per_edge=float(per_edge),
            per_target=float(per_target),
            per_block=float(per_block),
            per_atom=float(2 * k * c),
            per_head_atom=float(per_head_atom),
            graph_bytes_per_edge=float(graph_bytes),
            flops_per_edge=float(flops),
        )

    def block_bytes(self, edges: int, targets: int, itemsize: int) -> float:
        """Estimated peak bytes of one block of ``edges`` edges and ``targets`` targets."""
        numbers = edges * self.per_edge + targets * self.per_target + self.per_block
        return numbers * itemsize

    def persistent_bytes(self, num_atoms: int, num_edges: int, itemsize: int) -> float:
        """Bytes held throughout a blocked forward pass: x, x_next, graph and plan."""
        return num_atoms * self.per_atom * itemsize + num_edges * self.graph_bytes_per_edge


def free_memory_bytes(device: torch.device) -> float:
    """Memory free for a block: CUDA: free device memory plus what torch's allocator holds
    unused; CPU: ``MemAvailable`` (infinite where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return float(free + cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


def block_edges(
    memory: InferenceMemory,
    num_atoms: int,
    num_edges: int,
    itemsize: int,
    device: torch.device,
    free_bytes: float | None = None,
) -> int:
    """Edges per block from the memory budget (see the module docstring)."""
    if num_edges == 0:
        return 0
    per_edge = memory.block_bytes(1, 0, itemsize) - memory.per_block * itemsize
    per_edge += memory.per_target * itemsize * num_atoms / num_edges  # the targets' share
    persistent = memory.persistent_bytes(num_atoms, num_edges, itemsize)
    edges = max(
        FRACTION * persistent / per_edge,
        MIN_BLOCK_FLOPS.get(device.type, MIN_BLOCK_FLOPS["cuda"]) / memory.flops_per_edge,
    )
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    edges = min(edges, FREE_FRACTION * free / per_edge)
    return max(1, int(edges))


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetBlock:
    """Targets ``[node_start, node_stop)``, their edges ``[edge_start, edge_stop)``, and
    the block's local graph: ``nodes [n']`` (global index of each local node: the targets
    first, in order, then the other sources, ascending) with the block's edges grouped by
    local source and by local target (``target`` over the n targets only)."""

    node_start: int
    node_stop: int
    edge_start: int
    edge_stop: int
    nodes: torch.Tensor  # [n'] long
    source: NodeGroups  # index [e] local source, slots [n', W_s]
    target: NodeGroups  # index [e] local target (< n), slots [n, W_t]


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of one graph, and the atoms per readout block."""

    blocks: list[TargetBlock]
    node_block: int

    def to(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BlockPlan:
        """The plan with ``fn`` applied to every tensor (e.g. to fake CUDA tensors in tests)."""

        def groups(g: NodeGroups) -> NodeGroups:
            return NodeGroups(fn(g.index), fn(g.slot), fn(g.slots))

        blocks = [
            TargetBlock(
                b.node_start,
                b.node_stop,
                b.edge_start,
                b.edge_stop,
                fn(b.nodes),
                groups(b.source),
                groups(b.target),
            )
            for b in self.blocks
        ]
        return BlockPlan(blocks, self.node_block)


def target_major_order(edge_index: torch.Tensor) -> torch.Tensor | None:
    """``None`` if the targets ``edge_index[1]`` never decrease, else the stable
    permutation ``[E]`` that sorts the edges by target (one host sync)."""
    target = edge_index[1]
    if target.numel() < 2 or not bool((target[1:] < target[:-1]).any()):
        return None
    return torch.argsort(target, stable=True)


def _ranges(ptr: np.ndarray, max_edges: int, max_nodes: int) -> list[tuple[int, int]]:
    """Greedy runs ``[a, b)`` of consecutive targets with at most ``max_edges`` edges and
    ``max_nodes`` targets (at least one target each); ``ptr [N+1]``: edge offsets."""
    num_nodes, out, a = ptr.shape[0] - 1, [], 0
    while a < num_nodes:
        b = int(np.searchsorted(ptr, ptr[a] + max_edges, side="right")) - 1
        b = min(max(b, a + 1), a + max_nodes, num_nodes)
        out.append((a, b))
        a = b
    return out


def plan_blocks(edge_index: torch.Tensor, num_nodes: int, max_edges: int) -> BlockPlan:
    """Blocks of consecutive targets with at most ``max_edges`` edges each (a target with
    more edges is a block of its own) and at most as many targets as ``max_edges`` edges
    hold on average; ``edge_index [2, E]`` must be target-major."""
    source, target = edge_index
    num_edges = source.shape[0]
    max_nodes = max(1, math.ceil(max_edges * num_nodes / max(num_edges, 1)))
    counts = torch.bincount(target, minlength=num_nodes)  # [N]
    ptr = np.concatenate([[0], torch.cumsum(counts, 0).cpu().numpy()])  # [N+1], host
    blocks = []
    for a, b in _ranges(ptr, max(max_edges, 1), max_nodes):
        e0, e1 = int(ptr[a]), int(ptr[b])
        src = source[e0:e1]
        inside = (src >= a) & (src < b)
        others = torch.unique(src[~inside])  # sorted
        nodes = torch.cat([torch.arange(a, b, device=src.device), others])  # [n']
        outside_index = (b - a) + torch.searchsorted(others, src)
        local_source = torch.where(inside, src - a, outside_index)
        blocks.append(
            TargetBlock(
                a,
                b,
                e0,
                e1,
                nodes,
                group_by_node(local_source, nodes.shape[0]),
                group_by_node(target[e0:e1] - a, b - a),
            )
        )
    return BlockPlan(blocks, max_nodes)


# --- the block loop -------------------------------------------------------------------------

#: ``edge_tensors(edges)`` for a slice of the edges: rotation rows [e, nnz], distance basis
#: [e, num_basis] and envelope weights [e] (or None), in the node features' dtype
EdgeTensors = Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def run_blocked_layers(
    layers: Sequence[InteractionLayer],
    x: torch.Tensor,
    atomic_numbers: torch.Tensor,
    edge_index: torch.Tensor,
    plan: BlockPlan,
    edge_tensors: EdgeTensors,
) -> torch.Tensor:
    """The interaction layers with their residuals, block by block: ``x [N, K, C] ->
    [N, K, C]``, equal to running them on the whole graph (module docstring).

    ``edge_index [2, E]`` (global, target-major) and ``atomic_numbers [N]`` feed the edge
    features; ``edge_tensors`` computes each block's per-edge inputs when it is run.
    Two buffers of x's size take turns as a layer's input and output, the first being
    ``x`` itself: with two layers or more, **x is overwritten** (the caller's reference
    to the embedding would otherwise keep a third buffer alive).
    """
    buffers = [x, None]  # [N, K, C] each: input and output of a layer, in turns
    for i, layer in enumerate(layers):
        x = buffers[i % 2]
        if buffers[(i + 1) % 2] is None:
            buffers[(i + 1) % 2] = torch.empty_like(x)
        out = buffers[(i + 1) % 2]
        for block in plan.blocks:
            edges = slice(block.edge_start, block.edge_stop)
            wigner, basis, weight = edge_tensors(edges)  # [e, nnz], [e, B], [e] | None
            x_local = x.index_select(0, block.nodes)  # [n', K, C], the targets first
            update = layer(
                x_local,
                basis,
                atomic_numbers,
                edge_index[:, edges],
                MessageEdges(wigner, block.source, block.target),
                weight,
            )  # [n, K, C]
            rows = slice(block.node_start, block.node_stop)
            out[rows] = update if i == 0 else x[rows] + update
    return buffers[len(layers) % 2]


def node_blocks(num_nodes: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most ``size`` nodes (one slice: all, when ``size`` is None)."""
    if size is None or size >= num_nodes:
        return [slice(0, num_nodes)]
    return [slice(a, min(a + size, num_nodes)) for a in range(0, num_nodes, size)]

"""The on-the-fly radius graph: periodic or not, float32 or float64, any coordinates.

fairchem 1.10's ``generate_graph`` has three traps: the non-periodic path needs
torch-cluster or pyg-lib (not installed with fairchem), ``radius_graph_pbc`` builds its
image offsets in float32 (float64 batches fail), and positions far from the cell are
rounded there (which changes the neighbours picked). Here the graph is built in three
steps, per batch of B systems with N atoms::

    pos_w  = pos - floor(frac(pos)) @ cell      # wrap into the cell, periodic axes only
    edges  = neighbours(float32(pos_w), cell)   # fairchem's radius_graph_pbc: indices and
                                                # integer image offsets n_e only
    vec_e  = pos_w[j] - pos_w[i] + n_e @ cell   # [E, 3] in the input's dtype (j -> i)

The wrap shift ``floor(frac)`` is a constant integer per atom, so ``pos_w`` and ``vec``
are differentiable in ``pos`` and ``cell`` (forces and stress) and exact in float64, and
moving an atom by any lattice vector leaves the graph unchanged. Non-periodic systems use
the same neighbour search with no periodic axis (no torch-cluster needed). Neighbours:
within ``cutoff``, at most ``max_neighbors`` nearest per atom (fairchem's rule, ties
included within 0.01 A unless ``enforce_max_neighbors_strictly``), ordered by target
atom, then source atom and image (deterministic).

Periodic axes: none with ``use_pbc: False``; else the record's ``pbc`` where present
(AtomsToGraphs stores ASE's), all three otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from fairchem.core.common.utils import radius_graph_pbc
from fairchem.core.models.base import GraphData, GraphModelMixin

__all__ = [
    "RadiusGraphMixin",
    "edge_vectors",
    "neighbor_list",
    "periodic_axes",
    "wrap_positions",
]


def periodic_axes(data, use_pbc: bool) -> torch.Tensor:
    """``[B, 3]`` bool: which lattice directions of each system are periodic."""
    natoms = getattr(data, "natoms", None)
    num_systems = len(natoms) if natoms is not None else 1
    device = data.pos.device
    pbc = getattr(data, "pbc", None)
    if not use_pbc:
        return torch.zeros(num_systems, 3, dtype=torch.bool, device=device)
    if pbc is None:
        return torch.ones(num_systems, 3, dtype=torch.bool, device=device)
    pbc = torch.as_tensor(pbc, device=device).reshape(-1, 3).bool()
    if pbc.shape[0] != num_systems:
        raise ValueError(f"'pbc' holds {pbc.shape[0]} rows of 3 flags for {num_systems} systems")
    return pbc


def _batch_of(data) -> torch.Tensor:
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)
    return batch


def wrap_positions(
    pos: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, periodic: torch.Tensor
) -> torch.Tensor:
    """``pos [N, 3] -> pos - floor(frac) @ cell``: each atom moved by a whole lattice vector
    into its cell along periodic axes (``periodic [B, 3]``; ``cell [B, 3, 3]``, rows are
    lattice vectors). The shift is constant, so the gradient is the identity in ``pos``."""
    if not periodic.any():
        return pos
    cell_atom = cell[batch]  # [N, 3, 3]
    with torch.no_grad():
        # pos = frac @ cell  <=>  cell^T frac^T = pos^T; identity for non-periodic systems,
        # whose cell may be zero
        wrapped = periodic.any(dim=1)[batch].view(-1, 1, 1)  # [N, 1, 1]
        eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
        lattice = torch.where(wrapped, cell_atom, eye)
        frac = torch.linalg.solve(lattice.transpose(1, 2), pos.unsqueeze(-1)).squeeze(-1)
        shift = torch.floor(frac) * periodic[batch]  # [N, 3] whole lattice vectors
    return pos - torch.einsum("ni,nij->nj", shift.to(pos.dtype), cell_atom)


@contextmanager
def _float32_default() -> Iterator[None]:
    # fairchem's radius_graph_pbc makes some tensors in the default dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def neighbor_list(
    pos: torch.Tensor,
    cell: torch.Tensor,
    natoms: torch.Tensor,
    pbc: list[bool],
    cutoff: float,
    max_neighbors: int,
    strict: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour indices of a batch whose systems share the periodic axes ``pbc``.

    Returns ``edge_index [2, E]`` (source j, target i), integer image offsets
    ``[E, 3]`` (float32) and edges per system ``[B]``. Distances are compared in float32:
    the positions must already be wrapped (:func:`wrap_positions`).
    """
    graph_input = SimpleNamespace(
        pos=pos.detach().float(), cell=cell.detach().float(), natoms=natoms
    )
    with torch.no_grad(), _float32_default():
        return radius_graph_pbc(graph_input, cutoff, max_neighbors, strict, pbc=list(pbc))


def edge_vectors(
    pos: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
    edge_index: torch.Tensor,
    cell_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``vec [E, 3] = pos[j] - pos[i] + offsets``, ``offsets [E, 3] = n_e @ cell``, in
    the dtype of ``pos``."""
    source, target = edge_index
    offsets = torch.einsum("ei,eij->ej", cell_offsets.to(cell.dtype), cell[batch[source]])
    vec = pos[source] - pos[target] + offsets.to(pos.dtype)
    return vec, offsets


def _graph_per_system(data, pos, cell, periodic, cutoff, max_neighbors, strict):
    """The neighbour search one system at a time (``use_pbc_single``, or a batch whose
    systems differ in their periodic axes)."""
    edges, offsets, neighbors = [], [], []
    start = 0
    for system, n in enumerate(data.natoms.tolist()):
        e, o, k = neighbor_list(
            pos[start : start + n],
            cell[system : system + 1],
            data.natoms[system : system + 1],
            periodic[system].tolist(),
            cutoff,
            max_neighbors,
            strict,
        )
        edges.append(e + start)
        offsets.append(o)
        neighbors.append(k)
        start += n
    return torch.cat(edges, dim=1), torch.cat(offsets), torch.cat(neighbors)


class RadiusGraphMixin(GraphModelMixin):
    """fairchem's ``GraphModelMixin`` with the on-the-fly graph built by this module.

    Precomputed graphs (``otf_graph: False`` and ``edge_index`` in the data) still go
    through fairchem's code, so they match the reference model exactly.
    """

    def generate_graph(
        self,
        data,
        cutoff=None,
        max_neighbors=None,
        use_pbc=None,
        otf_graph=None,
        enforce_max_neighbors_strictly=None,
        use_pbc_single=False,
    ) -> GraphData:
        cutoff = cutoff or self.cutoff
        max_neighbors = max_neighbors or self.max_neighbors
        use_pbc = use_pbc or self.use_pbc
        use_pbc_single = use_pbc_single or self.use_pbc_single
        otf_graph = otf_graph or self.otf_graph
        if enforce_max_neighbors_strictly is None:
            enforce_max_neighbors_strictly = getattr(self, "enforce_max_neighbors_strictly", True)
        has_edges = hasattr(data, "edge_index") and (
            not use_pbc or (hasattr(data, "cell_offsets") and hasattr(data, "neighbors"))
        )
        if not otf_graph and has_edges:
            return super().generate_graph(
                data, cutoff, max_neighbors, use_pbc, otf_graph, enforce_max_neighbors_strictly
            )

        pos, batch = data.pos, _batch_of(data)
        num_systems = len(data.natoms)
        cell = getattr(data, "cell", None)
        if cell is None:
            cell = pos.new_zeros(num_systems, 3, 3)
        cell = cell.to(pos.dtype).view(num_systems, 3, 3)
        periodic = periodic_axes(data, use_pbc)  # [B, 3]
        pos = wrap_positions(pos, cell, batch, periodic)

        args = (cutoff, max_neighbors, enforce_max_neighbors_strictly)
        uniform = bool((periodic == periodic[0]).all())
        if use_pbc_single or not uniform:
            edge_index, cell_offsets, neighbors = _graph_per_system(
                data, pos, cell, periodic, *args
            )
        else:
            edge_index, cell_offsets, neighbors = neighbor_list(
                pos, cell, data.natoms, periodic[0].tolist(), *args
            )
        vec, offsets = edge_vectors(pos, cell, batch, edge_index, cell_offsets)
        return GraphData(
            edge_index=edge_index,
            edge_distance=vec.norm(dim=-1),
            edge_distance_vec=vec,
            cell_offsets=cell_offsets.to(pos.dtype),
            offset_distances=offsets,
            neighbors=neighbors,
            node_offset=0,
            batch_full=batch,
            atomic_numbers_full=data.atomic_numbers.long(),
        )

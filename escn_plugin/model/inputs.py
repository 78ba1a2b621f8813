"""The input stage: from a batch to checked, wrapped positions and a radius graph with
exact edge vectors (:meth:`RadiusGraphMixin.prepare_graph` runs it, in this order)::

    check_atoms, check_cells, check_overlaps    # named errors, not NaNs or deep shape errors
    pos_w  = pos - floor(frac(pos)) @ cell      # wrap into the cell, periodic axes only
    edges  = neighbor_list(pos_w, cell, pbc)    # cell lists (model/neighbors.py): indices
                                                # and integer image offsets n_e only
    vec_e  = pos_w[j] - pos_w[i] + n_e @ cell   # [E, 3] in the input's dtype (j -> i)
    check_edges                                 # no pair closer than MIN_DISTANCE

The wrap shift ``floor(frac)`` is a constant integer per atom, so ``pos_w`` and ``vec``
are differentiable in ``pos`` and ``cell`` (forces and stress) and exact in float64, and
moving an atom by any lattice vector leaves the graph unchanged. Neighbours: within
``cutoff``, at most ``max_neighbors`` nearest per atom (fairchem's rule, ties kept unless
``enforce_max_neighbors_strictly``), ordered by target atom, then source atom and image
(deterministic). Time and memory are linear in the number of atoms (fairchem's
``radius_graph_pbc`` is quadratic: ``neighbor_search: fairchem`` keeps it for comparison);
non-periodic systems need no torch-cluster. Precomputed graphs (``otf_graph: False`` with
edges in the data) go through fairchem's own code, so they match the reference exactly.

Periodic axes: none with ``use_pbc: False``; else the record's ``pbc`` where present
(AtomsToGraphs stores ASE's), all three otherwise; systems of one batch may differ.
"""

from __future__ import annotations

import torch
from fairchem.core.models.base import GraphData, GraphModelMixin

from escn_plugin.model.neighbors import close_pairs, neighbor_list

__all__ = [
    "MIN_DISTANCE",
    "RadiusGraphMixin",
    "check_atoms",
    "check_batch_layout",
    "check_cells",
    "check_edges",
    "check_overlaps",
    "edge_vectors",
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


MIN_DISTANCE = 1e-4  # Angstrom
#: beyond this distance from the origin float32 resolves positions to worse than 1e-3 A
MAX_FLOAT32_COORDINATE = 1e4  # Angstrom
#: a cell whose volume is below this fraction of the product of its vector lengths
MIN_RELATIVE_VOLUME = 1e-6


def _system_of(data, atom: int) -> int:
    batch = getattr(data, "batch", None)
    return int(batch[atom]) if batch is not None else 0


def check_batch_layout(batch: torch.Tensor, natoms: torch.Tensor) -> None:
    """``batch [N]`` must list the systems' atoms one system after the other, ``natoms [B]``
    of each (how fairchem collates): per-system sums read them as contiguous runs."""
    total = int(natoms.sum())
    if batch.shape[0] != total:
        raise ValueError(f"'batch' has {batch.shape[0]} entries but 'natoms' sums to {total}")
    expected = torch.repeat_interleave(
        torch.arange(len(natoms), device=batch.device), natoms.to(batch.device)
    )
    if not torch.equal(batch, expected):
        atom = int((batch != expected).nonzero()[0])
        raise ValueError(
            f"atom {atom} has batch index {int(batch[atom])} where 'natoms' puts system "
            f"{int(expected[atom])}: the atoms of each system must be stored together, in "
            "system order (as fairchem's collater does)"
        )


def check_atoms(data, max_num_elements: int) -> None:
    """Atomic numbers in 1..max_num_elements-1, finite positions (within float32's
    resolution when stored in float32), at least one atom."""
    pos, numbers = data.pos, data.atomic_numbers
    if pos.shape[0] == 0:
        raise ValueError("empty batch: the input holds no atoms (check the dataset/sampler)")
    natoms = getattr(data, "natoms", None)
    if natoms is not None and (natoms == 0).any():
        system = int((natoms == 0).nonzero()[0])
        sid = getattr(data, "sid", None)
        name = "" if sid is None else f" (sid {sid[system] if len(sid) > system else sid})"
        raise ValueError(
            f"system {system}{name} of the batch has no atoms: remove empty structures from "
            "the dataset (python -m escn_plugin.check_data names them)"
        )
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [num_atoms, 3], got {tuple(pos.shape)}")
    batch = getattr(data, "batch", None)
    if natoms is not None and batch is not None:
        check_batch_layout(batch, natoms)
    if numbers.shape[0] != pos.shape[0]:
        raise ValueError(
            f"atomic_numbers has {numbers.shape[0]} entries but there are {pos.shape[0]} atoms"
        )
    bad = (numbers < 1) | (numbers >= max_num_elements)
    if bad.any():
        atom = int(bad.nonzero()[0])
        z = int(numbers[atom])
        fix = (
            "0 and negative numbers are no element: check the structure's numbers"
            if z < 1
            else "raise max_num_elements in the model config"
        )
        raise ValueError(
            f"atomic number {z} of atom {atom} (system {_system_of(data, atom)}) is outside "
            f"1..{max_num_elements - 1} (max_num_elements={max_num_elements}); {fix}"
        )
    finite = torch.isfinite(pos).all(dim=1)
    if not finite.all():
        atom = int((~finite).nonzero()[0])
        raise ValueError(
            f"position of atom {atom} (system {_system_of(data, atom)}) is not finite: "
            f"{pos[atom].tolist()}"
        )
    if pos.dtype in (torch.float32, torch.float16, torch.bfloat16):
        far = pos.abs().amax(dim=1) > MAX_FLOAT32_COORDINATE
        if far.any():
            atom = int(far.nonzero()[0])
            raise ValueError(
                f"atom {atom} (system {_system_of(data, atom)}) is at {pos[atom].tolist()}, "
                f"beyond {MAX_FLOAT32_COORDINATE:g} A where {pos.dtype} positions are "
                "rounded by more than 1e-3 A: wrap the structure into its cell "
                "(ase: atoms.wrap()) or centre it before converting, or pass float64 positions"
            )


def check_cells(data, use_pbc: bool) -> None:
    """Finite cells, and a non-degenerate one (three independent lattice vectors) for
    every system that is periodic along any axis."""
    cell = getattr(data, "cell", None)
    periodic = periodic_axes(data, use_pbc).any(dim=1)  # [B]
    if cell is None:
        if periodic.any():
            raise ValueError("use_pbc is True but the input holds no cell")
        return
    cell = cell.detach().double().view(-1, 3, 3)  # [B, 3, 3]
    finite = torch.isfinite(cell).flatten(1).all(dim=1)  # [B]
    volume = torch.linalg.det(torch.where(finite[:, None, None], cell, 0.0)).abs()  # [B]
    scale = cell.norm(dim=2).prod(dim=1)  # [B]
    bad = periodic & ~(finite & (volume > MIN_RELATIVE_VOLUME * scale) & (scale > 0))
    if bad.any():
        system = int(bad.nonzero()[0])
        lattice = cell[system].tolist()
        if not finite[system]:
            raise ValueError(f"cell of system {system} is not finite: {lattice}")
        raise ValueError(
            f"cell of system {system} is degenerate (volume {float(volume[system]):.3g} "
            f"A^3, lattice vectors {lattice}) but the system is periodic: give three "
            "independent lattice vectors (add vacuum along non-periodic directions), or "
            "mark it non-periodic (pbc False in ASE, use_pbc: False in the model)"
        )


def check_edges(data, edge_index: torch.Tensor, edge_distance: torch.Tensor) -> None:
    """No two atoms (or periodic images) closer than ``MIN_DISTANCE``."""
    if edge_distance.numel() == 0:
        return
    too_close = edge_distance < MIN_DISTANCE
    if too_close.any():
        e = int(too_close.nonzero()[0])
        s, t = int(edge_index[0, e]), int(edge_index[1, e])
        raise ValueError(
            f"atoms {s} and {t} (system {_system_of(data, t)}) are "
            f"{float(edge_distance[e]):.2e} A apart (< {MIN_DISTANCE} A): overlapping atoms "
            "or periodic images; check the structure and its cell"
        )


def check_overlaps(data, use_pbc: bool) -> None:
    """No two atoms of a system closer than ``MIN_DISTANCE``, periodic images included
    (an atom and its own image too). Cell lists (:func:`~escn_plugin.model.neighbors.
    close_pairs`): linear in the number of atoms, on any device. Needed besides
    :func:`check_edges` for precomputed graphs, which may lack such pairs (fairchem's
    search drops pairs closer than 0.01 A)."""
    pos = data.pos.detach()
    natoms = getattr(data, "natoms", None)
    if natoms is None:
        natoms = torch.tensor([pos.shape[0]], device=pos.device)
    periodic = periodic_axes(data, use_pbc)  # [B, 3]
    cell = getattr(data, "cell", None)
    cell = pos.new_zeros(len(natoms), 3, 3) if cell is None else cell.detach().view(-1, 3, 3)
    batch = _batch_of(data)
    wrapped = wrap_positions(pos.double(), cell.double(), batch, periodic)
    pairs, _, distance = close_pairs(wrapped, cell.double(), natoms, periodic, MIN_DISTANCE)
    if pairs.shape[1] > 0:
        j, i = sorted(int(v) for v in pairs[:, 0])
        raise ValueError(
            f"atoms {j} and {i} (system {_system_of(data, i)}) are {float(distance[0]):.2e} A "
            f"apart (< {MIN_DISTANCE} A, periodic images included): overlapping atoms; "
            "check the structure and its cell"
        )


def edge_vectors(
    pos: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
    edge_index: torch.Tensor,
    cell_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``vec [E, 3] = pos[j] - pos[i] + offsets``, ``offsets [E, 3] = n_e @ cell``, in
    the dtype of ``pos`` (``edge_index [2, E]``: source j, target i; ``cell_offsets [E, 3]``
    integer image offsets n_e). Exact in float64, unlike fairchem's ``get_pbc_distances``,
    which rounds the periodic shifts to float32 (a float64 energy would then be a step
    function of the cell at the 1e-7 level)."""
    source, target = edge_index
    if cell_offsets.shape[0] != source.shape[0]:
        raise ValueError(
            f"cell_offsets has {cell_offsets.shape[0]} rows for {source.shape[0]} edges"
        )
    offsets = torch.einsum("ei,eij->ej", cell_offsets.to(cell.dtype), cell[batch[source]])
    vec = pos[source] - pos[target] + offsets.to(pos.dtype)
    return vec, offsets


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

        # one call for the whole batch, whatever each system's periodic axes (linear cost:
        # use_pbc_single, fairchem's way to save memory, gives the same graph)
        edge_index, cell_offsets, neighbors = neighbor_list(
            pos, cell, data.natoms, periodic, cutoff, max_neighbors,
            enforce_max_neighbors_strictly, method=getattr(self, "neighbor_search", "vesin"),
        )  # fmt: skip
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

    def prepare_graph(self, data, exact_edge_vectors: bool = False) -> GraphData:
        """The input stage, in order: check atoms and cells, wrap, neighbours, exact edge
        vectors, check edges. ``exact_edge_vectors``: also redo a precomputed periodic
        graph's vectors in the positions' dtype (gradient forces and stress)."""
        validate = getattr(self, "validate_inputs", True)
        if validate:
            check_atoms(data, self.max_num_elements)
            check_cells(data, self.use_pbc)
            check_overlaps(data, self.use_pbc)
        graph = self.generate_graph(data)
        precomputed = hasattr(data, "edge_index") and hasattr(data, "cell_offsets")
        if exact_edge_vectors and self.use_pbc and not self.otf_graph and precomputed:
            # fairchem's path for precomputed graphs rounds the periodic shifts to float32
            vec, _ = edge_vectors(
                data.pos, data.cell.to(data.pos.dtype).view(-1, 3, 3), _batch_of(data),
                graph.edge_index, graph.cell_offsets,
            )  # fmt: skip
            graph.edge_distance_vec, graph.edge_distance = vec, vec.norm(dim=-1)
        if validate:
            check_edges(data, graph.edge_index, graph.edge_distance)
        return graph
